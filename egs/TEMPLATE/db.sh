# Where the corpus is: one variable per corpus location; an environment variable of the same name
# overrides it (CORPUS=/data/mycorpus ./run.sh). Rename CORPUS after your corpus.
CORPUS=${CORPUS:-downloads/corpus}
