#!/usr/bin/env bash
# Parse "--name value" options into shell variables the calling script declared beforehand.
#
# Source it after declaring defaults:   stage=1; use_lora=false; . utils/parse_options.sh
#   --stop-stage 5 and --stop_stage 5 both set $stop_stage;
#   an option whose variable was not declared is an error (typos never pass silently);
#   a variable declared as true/false accepts only true or false, one declared as a whole number
#   only a whole number (so --stage x stops here, not in a test deep inside the script);
#   option names are lower case (--PATH would replace the environment's);
#   --config FILE sources FILE (shell assignments, never a .yaml) at that point of the command line,
#   and its names and its true/false and whole-number values get the checks above;
#   --help / -h prints $help_message and exits 0;
#   a variable the script sets beforehand for its own use is named with a leading _ (not an option).
# Parsing stops at the first argument that does not start with "--"; those remain in "$@".

_po_prog=$(basename "$0")
# Each option's kind is its declared default's, taken before any option or --config file sets it
# (--seeds 1 --seeds "1 2" is two settings of a free-text option, not a number and then a mistake).
declare -A _po_kind=()
for _po_name in $(compgen -v); do
  [[ "${_po_name}" =~ ^[a-z][a-z0-9_]*$ ]] || continue
  case "${!_po_name-}" in   # (an empty array has no value: under set -u, "unbound variable")
    true|false) _po_kind[${_po_name}]=bool ;;
    *) [[ "${!_po_name-}" =~ ^-?[0-9]+$ ]] && _po_kind[${_po_name}]=int ;;
  esac
done

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      if [ -n "${help_message:-}" ]; then printf '%s\n' "${help_message}"; else echo "${_po_prog}: no help message"; fi
      exit 0 ;;
    --config)
      [ $# -ge 2 ] || { echo "${_po_prog}: --config needs a file" >&2; exit 1; }
      [ -f "$2" ] || { echo "${_po_prog}: config file '$2' does not exist" >&2; exit 1; }
      case "$2" in *.yaml|*.yml)   # sourced, a YAML file ran its lines as commands
        echo "${_po_prog}: --config takes a shell file of name=value lines, not the YAML '$2' (training and" \
          "decoding configs have options of their own: see --help)" >&2; exit 1 ;;
      esac
      _po_before=" $(compgen -v | tr '\n' ' ') "
      # shellcheck disable=SC1090
      . "$2"
      for _po_name in $(compgen -v); do   # a misspelt name set a variable nothing reads, as --stgae would
        if [[ "${_po_name}" =~ ^[a-z][a-z0-9_]*$ ]] && [[ "${_po_before}" != *" ${_po_name} "* ]]; then
          echo "${_po_prog}: --config $2: '${_po_name}' is no option of ${_po_prog} (see --help)" >&2; exit 1
        fi
      done
      # its values get the command line's checks: a bool 'True' or 'yes' ran as a command at each test of it
      for _po_name in $(printf '%s\n' "${!_po_kind[@]}" | sort); do
        _po_value=${!_po_name-}
        if [ "${_po_kind[${_po_name}]}" = bool ] && [ "${_po_value}" != true ] && [ "${_po_value}" != false ]; then
          echo "${_po_prog}: --config $2: option '${_po_name}' takes true or false, not '${_po_value}'" >&2; exit 1
        fi
        if [ "${_po_kind[${_po_name}]}" = int ] && ! [[ "${_po_value}" =~ ^-?[0-9]+$ ]]; then
          echo "${_po_prog}: --config $2: option '${_po_name}' takes a whole number, not '${_po_value}'" >&2; exit 1
        fi
      done
      shift 2 ;;
    --*=*)
      echo "${_po_prog}: write options as '--name value', not '$1'" >&2; exit 1 ;;
    --*)
      _po_name=$(echo "${1#--}" | sed 's/-/_/g')
      if ! [[ "${_po_name}" =~ ^[a-z][a-z0-9_]*$ ]]; then   # options are lower case: not PATH, HOME, _po_*
        echo "${_po_prog}: invalid option '$1'" >&2; exit 1
      fi
      if [ -z "${!_po_name+set}" ] || [ "${_po_name}" = help_message ]; then
        echo "${_po_prog}: unknown option '$1' (run with --help for the list)" >&2; exit 1
      fi
      [ $# -ge 2 ] || { echo "${_po_prog}: option '$1' needs a value" >&2; exit 1; }
      if [ "${_po_kind[${_po_name}]:-}" = bool ] && [ "$2" != true ] && [ "$2" != false ]; then
        echo "${_po_prog}: option '$1' takes true or false, not '$2'" >&2; exit 1
      fi
      if [ "${_po_kind[${_po_name}]:-}" = int ] && ! [[ "$2" =~ ^-?[0-9]+$ ]]; then
        echo "${_po_prog}: option '$1' takes a whole number, not '$2'" >&2; exit 1
      fi
      printf -v "${_po_name}" '%s' "$2"
      shift 2 ;;
    *) break ;;
  esac
done

unset _po_prog _po_name _po_kind _po_value _po_before
true
