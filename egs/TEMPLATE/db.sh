# Where the corpus is: one variable per corpus location; an environment variable of the same name
# overrides it (CORPUS=/data/mycorpus ./run.sh). Rename CORPUS after your corpus, here and in
# local/data.sh, which reads it.
CORPUS=${CORPUS:-downloads/corpus}
