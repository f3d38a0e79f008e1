# Where the corpus is; an environment variable of the same name overrides each line:
#   SLURP=/data/slurp ./run.sh
# SLURP: a checkout of github.com/pswietojanski/slurp holding dataset/slurp/*.jsonl, with the audio
# tarballs unpacked in its audio/ (audio/slurp_real/*.flac, audio/slurp_synth/*.flac).
SLURP=${SLURP:-downloads/slurp}
