# Sourced by run.sh's stages and local/: the Python environment (tools/setup.sh made it) and utils/.
. ../../tools/activate_python.sh
PATH=$(cd ../../utils && pwd):${PATH}
export PATH
export PYTHONIOENCODING=utf-8
