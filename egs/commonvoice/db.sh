# Where the corpus is; an environment variable of the same name overrides each line:
#   COMMONVOICE=/data/cv-corpus-17.0-2024-03-15/en ./run.sh
# COMMONVOICE: a Common Voice release's language directory: clips/*.mp3, train.tsv, dev.tsv, test.tsv.
COMMONVOICE=${COMMONVOICE:-downloads/cv-corpus/en}
