#!/bin/bash
# Place ONE test call with SIPp to EXTEN@127.0.0.1:5060 (the lab Asterisk).
#
#   lab/call.sh EXTEN AUDIO_FILE DURATION_S [extra sipp args...]
#
# AUDIO_FILE is streamed once as PCMU RTP after the call is answered:
# a raw 8 kHz mu-law file (*.ulaw, *.ul, *.pcmu, *.mulaw) is used as is,
# anything else (WAV, ...) is converted with sox. The call lasts
# DURATION_S seconds (may be fractional) unless Asterisk hangs up first.
# Exit code: SIPp's (0 = call succeeded).
#
# Environment:
#   LAB_SIPP_PORT        local SIP port          (default 5070)
#   LAB_SIPP_MEDIA_PORT  local RTP port (-mp)    (default 6000)
#   LAB_CALL_DIR         directory for the per-call scenario, traces and
#                        converted audio (default: a new dir under
#                        lab/.cache/calls); kept after the call.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

usage() { echo "usage: $0 EXTEN AUDIO_FILE DURATION_S [extra sipp args...]" >&2; exit 2; }
[ $# -ge 3 ] || usage
EXTEN="$1"; AUDIO="$2"; DURATION="$3"; shift 3

command -v sipp >/dev/null || die "sipp missing (run lab/setup.sh)"
[ -f "$AUDIO" ] || die "audio file not found: $AUDIO"
case "$EXTEN" in ''|*[!A-Za-z0-9_.+*#-]*) die "bad extension '$EXTEN'" ;; esac
DURATION_MS="$(awk -v d="$DURATION" 'BEGIN { if (d + 0 <= 0) exit 1; printf "%d", d * 1000 }')" \
    || die "DURATION_S must be a positive number, got '$DURATION'"

SIPP_PORT="${LAB_SIPP_PORT:-5070}"
MEDIA_PORT="${LAB_SIPP_MEDIA_PORT:-6000}"
SCENARIO="$LAB_DIR/sipp/uac_pcmu.xml"

if [ -n "${LAB_CALL_DIR:-}" ]; then
    WORK="$LAB_CALL_DIR"
    mkdir -p "$WORK"
else
    mkdir -p "$LAB_CACHE/calls"
    WORK="$(mktemp -d "$LAB_CACHE/calls/$(date +%Y%m%d-%H%M%S)-$EXTEN-XXXX")"
fi

# The audio goes into the call dir under a fixed name, so the path put into
# the scenario never needs XML escaping.
ULAW="$WORK/audio.ulaw"
case "${AUDIO,,}" in
    *.ulaw|*.ul|*.pcmu|*.mulaw|*.raw)
        cp "$AUDIO" "$ULAW" ;;
    *)
        command -v sox >/dev/null || die "sox missing (run lab/setup.sh)"
        sox "$AUDIO" -r 8000 -c 1 -e u-law -t raw "$ULAW" \
            || die "sox could not convert $AUDIO" ;;
esac
[ -s "$ULAW" ] || die "no audio in $ULAW"

# SIPp 3.6.1 cannot take these two from -key/-set (see the scenario).
xml="$(cat "$SCENARIO")"
xml="${xml//__AUDIO_FILE__/"$ULAW"}"
xml="${xml//__DURATION_MS__/"$DURATION_MS"}"
printf '%s\n' "$xml" >"$WORK/scenario.xml"

# Give up well after the call should have ended.
TIMEOUT_S=$(( DURATION_MS / 1000 + 30 ))

cmd=(sipp "127.0.0.1:$LAB_SIP_PORT"
     -sf "$WORK/scenario.xml" -s "$EXTEN" -m 1
     -i 127.0.0.1 -p "$SIPP_PORT" -mi 127.0.0.1 -mp "$MEDIA_PORT"
     -nostdin -timeout "${TIMEOUT_S}s" -timeout_error
     -trace_err -error_file "$WORK/errors.log"
     -trace_msg -message_file "$WORK/messages.log"
     -trace_logs -log_file "$WORK/logs.log"
     -trace_stat -stf "$WORK/stat.csv"
     "$@")
printf '%q ' "${cmd[@]}" >"$WORK/command.txt"; echo >>"$WORK/command.txt"
log "calling $EXTEN for ${DURATION}s with $AUDIO (call dir $WORK)"
set +e
"${cmd[@]}" >"$WORK/sipp.out" 2>"$WORK/sipp.err"
rc=$?
set -e
hangup="$(grep -o 'hangup: [a-z]*' "$WORK/logs.log" 2>/dev/null | tail -n 1 | cut -d' ' -f2)"
if [ "$rc" -eq 0 ]; then
    log "call ok (hangup: ${hangup:-?})"
else
    tail -n 5 "$WORK/sipp.err" "$WORK/errors.log" 2>/dev/null >&2 || true
    log "sipp exit code $rc (hangup: ${hangup:-?}); traces in $WORK"
fi
echo "$WORK"
exit "$rc"
