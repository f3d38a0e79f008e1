# Where the corpora are; an environment variable of the same name overrides each line:
#   COVOST2=/data/covost2 COMMONVOICE=/data/cv-corpus-4-2019-12-10/en ./run.sh
# COVOST2: the directory of the CoVoST 2 tsv files as released (covost_v2.en_zh-CN.tsv, covost_v2.en_de.tsv,
#          ...: path, sentence, translation, split), or as get_covost_splits.py splits them
#          (covost_v2.en_de.{train,dev,test}.tsv).
# COMMONVOICE: the Common Voice English release whose clips/ the tsv files name (CoVoST 2 uses v4); its
#          validated.tsv gives the speakers of the released tables.
COVOST2=${COVOST2:-downloads/covost2}
COMMONVOICE=${COMMONVOICE:-downloads/cv-corpus/en}
