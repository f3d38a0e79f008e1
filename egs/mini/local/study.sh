#!/usr/bin/env bash
# The TASU study: which parts of TASU matter, measured on a finished ./run.sh (see local/study.py).
#
#   local/study.sh                              # every part (about 2 hours on 2 cores), then STUDY.md and STUDY.png
#   local/study.sh --parts "gap compression"    # some parts (decoding only: a few minutes)
#   local/study.sh --workdir seeds/seed1        # on a run of ./run.sh --seeds
#
# Re-run it to resume: cells that finished are kept, a killed training resumes from its last checkpoint.
set -euo pipefail

workdir=.       # the finished run's --workdir
parts="gap simulation compression projectors lowres textscale learned"
jobs=2          # cells at a time, one thread each
seed=1          # draws the low-resource subsets and the new sentences of the text-scaling part
quick=false     # the smallest sizes (tests)
out=STUDY.md    # the report; its low-resource plot goes beside it, as STUDY.png

help_message="Usage: $0 [options]
  --workdir <dir>   the finished run's --workdir (default: ${workdir})
  --parts <list>    which parts (default: \"${parts}\")
  --jobs <n>        cells at a time, one thread each (default: ${jobs})
  --seed <n>        draws the low-resource subsets and the new sentences (default: ${seed})
  --quick <bool>    the smallest sizes, for the tests (default: ${quick})
  --out <file>      the report (default: ${out}); the plot goes beside it as <name>.png"

. ./path.sh
. parse_options.sh
[ $# -eq 0 ] || { echo "$0: unexpected argument '$1' (run with --help)" >&2; exit 1; }

# study.py stops its trainings when it gets SIGTERM or SIGHUP. Sent to this script, such a signal is passed
# on (bash alone would end here and leave study.py and its trainings running). Ctrl-C reaches study.py and
# its trainings themselves (study.py takes SIGINT back from the background's "ignored"); this script
# ignores it and waits for study.py's status (a trap would end the wait early, and bash 5.2's next wait
# then lost the status now and then: 255).
study() {
  local child="" rc=0 status stopped="" trapped retried=""
  trap 'stopped=1; trapped=1; [ -z "${child}" ] || kill -TERM "${child}" 2> /dev/null || true' TERM HUP
  trap '' INT
  python3 local/study.py "$@" < /dev/null &
  child=$!
  [ -z "${stopped}" ] || kill -TERM "${child}" 2> /dev/null || true   # a signal before child was set
  # A trapped signal ends a wait early (status 128 + the signal) and leaves study.py's own status to the
  # next wait, also when study.py has ended meanwhile; 127 then: the last wait had collected it already.
  while :; do
    trapped=""
    wait "${child}" && status=0 || status=$?
    [ "${status}" -eq 127 ] && [ -n "${retried}" ] && break
    rc=${status}
    [ -n "${trapped}" ] && [ "${status}" -gt 128 ] || break
    retried=1
  done
  trap - TERM HUP INT
  return "${rc}"
}

opts=(--workdir "${workdir}" --parts "${parts}" --jobs "${jobs}" --seed "${seed}")
${quick} && opts+=(--quick)
study run "${opts[@]}"
study report "${opts[@]}" --out "${out}" --plot "${out%.md}.png"
echo "$0: wrote ${out}"
