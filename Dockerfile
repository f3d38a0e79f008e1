# tasu on NVIDIA GPUs. Build: docker build -t tasu .
# Run:   docker run --gpus all -it -v /data:/data tasu
# The CUDA devel image gives DeepSpeed's just-in-time ops a compiler; torch brings its own CUDA libraries.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential git sox espeak-ng flite ffmpeg \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/tasu
COPY . .
RUN tools/setup.sh --device cuda --system_packages false
ENV PATH=/opt/tasu/tools/venv/bin:${PATH}
CMD ["bash"]
