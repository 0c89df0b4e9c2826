#!/bin/bash
# Write the lab's own minimal Asterisk configuration into the root's
# /etc/asterisk. The package's sample configs are moved once to
# /etc/asterisk.dist inside the root, so only files we own are read.
# Safe to re-run; a running Asterisk needs a restart (or `core reload`).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
need_root
root_ready || die "no Asterisk root at $LAB_ROOT (run lab/build-root.sh first)"

case "$LAB_AUDIOSOCKET_PORT" in
    ''|*[!0-9]*) die "LAB_AUDIOSOCKET_PORT must be a port number, got '$LAB_AUDIOSOCKET_PORT'" ;;
esac
case "$LAB_ARI_PASSWORD$LAB_ARI_USER" in
    *[[:space:]\;\[\]]*) die "LAB_ARI_USER/LAB_ARI_PASSWORD must not contain spaces, ';' or brackets" ;;
esac

# Locate the module directory (multiarch path differs per architecture).
MODDIR_ABS="$(dirname "$(find "$LAB_ROOT/usr/lib" -name app_echo.so -path '*asterisk/modules/*' | head -n 1)")"
[ -f "$MODDIR_ABS/app_echo.so" ] || die "cannot find Asterisk modules under $LAB_ROOT/usr/lib"
MODDIR="${MODDIR_ABS#"$LAB_ROOT"}"

missing=()
for m in app_audiosocket chan_audiosocket res_audiosocket res_ari res_ari_channels \
         res_ari_bridges res_ari_asterisk res_stasis app_stasis res_http_websocket \
         res_pjsip chan_pjsip res_pjsip_session res_pjsip_sdp_rtp \
         res_pjsip_endpoint_identifier_ip res_rtp_asterisk func_shell \
         func_strings app_echo app_playback codec_ulaw format_pcm; do
    [ -f "$MODDIR_ABS/$m.so" ] || missing+=("$m")
done
[ ${#missing[@]} -eq 0 ] || die "modules missing from the root: ${missing[*]}"

ETC="$LAB_ROOT/etc/asterisk"
if [ ! -d "$LAB_ROOT/etc/asterisk.dist" ]; then
    log "moving the package's sample configs to /etc/asterisk.dist (inside the root)"
    mv "$ETC" "$LAB_ROOT/etc/asterisk.dist"
fi
rm -rf "$ETC"
mkdir -p "$ETC"

# A sanity sound for the `playback` extension, if the root ships one.
PLAYBACK_SOUND=""
for s in hello-world demo-congrats tt-monkeys; do
    # sounds/en is an absolute symlink (via /etc/alternatives): look from inside.
    if chroot "$LAB_ROOT" /bin/sh -c "ls /usr/share/asterisk/sounds/en/$s.*" >/dev/null 2>&1; then
        PLAYBACK_SOUND="$s"; break
    fi
done

HDR="; Written by voiceline lab/configure.sh -- do not edit, re-run the script."

cat >"$ETC/asterisk.conf" <<CONF
$HDR
[directories]
astcachedir => /var/cache/asterisk
astetcdir => /etc/asterisk
astmoddir => $MODDIR
astvarlibdir => /var/lib/asterisk
astdbdir => /var/lib/asterisk
astkeydir => /var/lib/asterisk
astdatadir => /usr/share/asterisk
astagidir => /usr/share/asterisk/agi-bin
astspooldir => /var/spool/asterisk
astrundir => /var/run/asterisk
astlogdir => /var/log/asterisk
astsbindir => /usr/sbin

[options]
verbose = 3
debug = 0
runuser = root
rungroup = root
documentation_language = en_US
; Do not let the console-less, backgrounded Asterisk try to be "nice".
highpriority = no
CONF

cat >"$ETC/modules.conf" <<CONF
$HDR
[modules]
autoload = yes
; Telephony hardware / local audio devices / other signalling stacks we
; do not use (several bind public ports or need devices missing in a chroot).
noload => chan_dahdi.so
noload => chan_console.so
noload => chan_alsa.so
noload => chan_oss.so
noload => chan_mobile.so
noload => chan_iax2.so
noload => chan_unistim.so
noload => chan_skinny.so
noload => chan_mgcp.so
noload => chan_sip.so
noload => chan_motif.so
noload => res_xmpp.so
noload => pbx_dundi.so
noload => pbx_lua.so
noload => pbx_realtime.so
noload => app_jack.so
noload => app_festival.so
noload => app_mp3.so
noload => app_voicemail_odbc.so
; CDR/CEL backends and realtime drivers that need a database or server.
noload => cdr_adaptive_odbc.so
noload => cdr_odbc.so
noload => cdr_pgsql.so
noload => cdr_radius.so
noload => cdr_tds.so
noload => cdr_sqlite3_custom.so
noload => cdr_custom.so
noload => cdr_manager.so
noload => cdr_csv.so
noload => cel_custom.so
noload => cel_manager.so
noload => cel_odbc.so
noload => cel_pgsql.so
noload => cel_radius.so
noload => cel_sqlite3_custom.so
noload => cel_tds.so
noload => res_config_curl.so
noload => res_config_ldap.so
noload => res_config_odbc.so
noload => res_config_pgsql.so
noload => res_config_sqlite3.so
noload => res_odbc.so
noload => res_odbc_transaction.so
noload => func_odbc.so
; Network services and integrations the lab does not need.
noload => res_snmp.so
noload => res_hep.so
noload => res_hep_pjsip.so
noload => res_hep_rtcp.so
noload => res_statsd.so
noload => res_prometheus.so
noload => res_calendar.so
noload => res_calendar_caldav.so
noload => res_calendar_ews.so
noload => res_calendar_exchange.so
noload => res_calendar_icalendar.so
noload => res_phoneprov.so
noload => res_pjsip_phoneprov_provider.so
noload => res_stir_shaken.so
noload => res_pjsip_stir_shaken.so
noload => res_resolver_unbound.so
noload => res_stun_monitor.so
noload => res_smdi.so
noload => res_fax_spandsp.so
noload => res_pjsip_outbound_registration.so
noload => res_pjsip_outbound_publish.so
noload => res_pjsip_publish_asterisk.so
noload => res_pjsip_exten_state.so
noload => res_pjsip_notify.so
; PBX feature applications that need their own config files.
noload => app_queue.so
noload => app_followme.so
noload => app_confbridge.so
noload => app_page.so
noload => app_amd.so
noload => app_alarmreceiver.so
noload => app_agent_pool.so
noload => app_voicemail.so
noload => app_minivm.so
noload => app_getcpeid.so
noload => app_adsiprog.so
noload => res_adsi.so
noload => res_parking.so
noload => pbx_ael.so
; Unused pjsip transports.
noload => res_pjsip_transport_websocket.so
CONF

cat >"$ETC/logger.conf" <<CONF
$HDR
[general]
dateformat = %F %T.%3q

[logfiles]
console => notice,warning,error,verbose
messages => notice,warning,error,verbose
CONF

cat >"$ETC/http.conf" <<CONF
$HDR
[general]
enabled = yes
bindaddr = $LAB_HTTP_HOST
bindport = $LAB_HTTP_PORT
CONF

cat >"$ETC/ari.conf" <<CONF
$HDR
[general]
enabled = yes
pretty = no

[$LAB_ARI_USER]
type = user
read_only = no
password = $LAB_ARI_PASSWORD
password_format = plain
CONF

cat >"$ETC/pjsip.conf" <<CONF
$HDR
[transport-udp]
type = transport
protocol = udp
bind = 127.0.0.1:$LAB_SIP_PORT

; The test caller (sipp), recognised by its source address.
[sipp]
type = endpoint
transport = transport-udp
context = voiceline
allow = !all,ulaw
direct_media = no
rtp_symmetric = yes
force_rport = yes
rewrite_contact = yes
media_address = 127.0.0.1
bind_rtp_to_media_address = yes
identify_by = ip
dtmf_mode = rfc4733

[sipp-identify]
type = identify
endpoint = sipp
match = 127.0.0.1
CONF

cat >"$ETC/rtp.conf" <<CONF
$HDR
[general]
rtpstart = $LAB_RTP_START
rtpend = $LAB_RTP_END
icesupport = no
CONF

cat >"$ETC/indications.conf" <<CONF
$HDR
[general]
country = us

[us]
description = United States
ringcadence = 2000,4000
dial = 350+440
busy = 480+620/500,0/500
ring = 440+480/2000,0/4000
congestion = 480+620/250,0/250
CONF

# Modules we keep only complain when their config file is missing: give
# them empty ones (built-in defaults), and switch CDR/CEL off.
for f in acl ccss features udptl pjproject pjsip_wizard geolocation aeap \
         websocket_client chan_websocket cli_aliases res_http_media_cache \
         musiconhold stasis; do
    printf '%s\n' "$HDR" >"$ETC/$f.conf"
done
printf '%s\n[general]\nenable = no\n' "$HDR" >"$ETC/cdr.conf"
printf '%s\n[general]\nenable = no\n' "$HDR" >"$ETC/cel.conf"

# A fresh UUID per call for AudioSocket: func_uuid's UUID() when present,
# else the kernel's generator through SHELL() (a UUID string is 36 chars,
# so head -c 36 also drops the newline). Both work in the chroot.
# shellcheck disable=SC2016  # dialplan expressions, not shell ones
if [ -f "$MODDIR_ABS/func_uuid.so" ]; then
    UUID_EXPR='${UUID()}'
else
    UUID_EXPR='${SHELL(head -c 36 /proc/sys/kernel/random/uuid)}'
fi

if [ -n "$PLAYBACK_SOUND" ]; then
    PLAYBACK_LINE=" same => n,Playback($PLAYBACK_SOUND)"
else
    PLAYBACK_LINE=" same => n,Echo()"
fi

cat >"$ETC/extensions.conf" <<CONF
$HDR
[general]
static = yes
writeprotect = yes
clearglobalvars = yes

[globals]
AUDIOSOCKET_PORT = $LAB_AUDIOSOCKET_PORT

[voiceline]
; Hand the call to the voiceline ARI application (the engine answers it).
exten => stasis,1,NoOp(voiceline: \${CHANNEL} -> Stasis(voiceline))
 same => n,Stasis(voiceline)
 same => n,Hangup()

; The same, choosing the agent per call: dialling ai-<provider> sets the channel
; variable AI_PROVIDER that the engine reads (e.g. ai-deepgram, ai-local). In a
; pattern "-" is ignored, so the pattern is _ai. and the prefix is cut by offset.
exten => _ai.,1,Set(AI_PROVIDER=\${EXTEN:3})
 same => n,Stasis(voiceline)
 same => n,Hangup()

; Stream the call to an AudioSocket server on 127.0.0.1:\${AUDIOSOCKET_PORT}.
exten => audiosocket,1,Answer()
 same => n,Set(AUDIOSOCKET_UUID=$UUID_EXPR)
 same => n,NoOp(voiceline: AudioSocket \${AUDIOSOCKET_UUID} -> 127.0.0.1:\${AUDIOSOCKET_PORT})
 same => n,AudioSocket(\${AUDIOSOCKET_UUID},127.0.0.1:\${AUDIOSOCKET_PORT})
 same => n,Hangup()

; Sanity checks.
exten => playback,1,Answer()
$PLAYBACK_LINE
 same => n,Hangup()

exten => echo,1,Answer()
 same => n,Echo()
 same => n,Hangup()

; Asterisk's own Playback() of the benchmark greeting: the timing reference of
; bench/compare.py, which writes the file (8 kHz mu-law) before it calls here.
exten => playback-greeting,1,Answer()
 same => n,Playback(/var/lib/asterisk/sounds/voiceline-bench/greeting)
 same => n,Hangup()

; Transfer target of the agents' 'transfer' action (tests/e2e/test_actions_e2e.py):
; the caller, sent here by ARI continue, hears a 440 Hz tone for a few seconds.
exten => operator,1,NoOp(voiceline: \${CHANNEL} transferred to the operator)
 same => n,Answer()
 same => n,Playtones(440)
 same => n,Wait(4)
 same => n,StopPlaytones()
 same => n,Hangup()

; A caller that presses keys, for tests (no SIP phone needed):
;   channel originate Local/stasis@voiceline extension keypad-caller@voiceline
; its other half enters Stasis as the call; this half sends 5 after 4 s, then waits.
exten => keypad-caller,1,Wait(4)
 same => n,SendDTMF(5)
 same => n,Wait(8)
 same => n,Hangup()
CONF

log "configured $ETC (ARI user $LAB_ARI_USER, AudioSocket port $LAB_AUDIOSOCKET_PORT, playback: ${PLAYBACK_SOUND:-Echo})"
