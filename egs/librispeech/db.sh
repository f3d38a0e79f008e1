# Where the corpus is; an environment variable of the same name overrides each line:
#   LIBRISPEECH=/data/LibriSpeech ./run.sh
# LIBRISPEECH: the directory holding train-clean-100/, dev-clean/, ... (the release's LibriSpeech/).
# LIBRISPEECH_LM_NORM: librispeech-lm-norm.txt (openslr.org/11), extra text for the text-only
# stage; empty: not used.
LIBRISPEECH=${LIBRISPEECH:-downloads/LibriSpeech}
LIBRISPEECH_LM_NORM=${LIBRISPEECH_LM_NORM:-}
