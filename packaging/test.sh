#!/usr/bin/env bash
# Package test, run by .ci/run after the unit and integration tests, on a
# Debian machine as root. systemd need not be PID 1.
#
#  1. builds the .deb and .rpm (packaging/build.sh);
#  2. checks the .deb: dpkg-deb --info/--contents, lintian (no errors, and
#     only the warnings explained below);
#  3. installs it with dpkg -i: service user, unit (systemd-analyze verify
#     and security), enablement, conffile, and where systemd is not running
#     dpkg's output saying the service was not started; Type=notify and
#     WatchdogSec=, the example socket unit (systemd-analyze verify; not
#     enabled), the installed binary under systemd-socket-activate; shell
#     completions (bash sources its file) and the Grafana dashboard in their
#     places;
#  4. starts /usr/bin/webhookd the way the unit does (its ExecStart, the
#     env file's settings, as its User/Group with its UMask, data in its
#     StateDirectory) under strace; runs health, POST, GET and processing;
#     stops it with SIGTERM (exit 0); then checks from the trace that the
#     unit's sandbox (SystemCallFilter, RestrictAddressFamilies,
#     MemoryDenyWriteExecute, ProtectSystem, ...) would not have broken it;
#  5. upgrades to a package rebuilt with a higher revision and checks that
#     the database and the edited env file are kept and still served;
#  6. removes it (dpkg -r) and checks what is removed and what is kept
#     (the settings file, the enablement link, a mask), then purges it and
#     checks the same;
#  7. inspects the .rpm (rpm -qpi, rpm -qpl) and checks it holds the same
#     files, with the same bytes, as the .deb.
#
# WEBHOOKD_PKGTEST_KEEP=1 keeps its work directory (logs, strace output,
# extracted packages) for a look after a failure.
#
# It refuses to run where webhookd is installed or /var/lib/webhookd exists,
# and on exit (pass or fail) purges the package, removes /var/lib/webhookd
# and the webhookd user if it created them. It leaves the revision-1
# packages in target/ as build.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }
fail() {
  printf '\npackaging/test.sh: FAIL: %s\n' "$*" >&2
  exit 1
}
started_at=$(date +%s)

[ "$(id -u)" -eq 0 ] || fail "run as root: the test installs, upgrades and purges the package"
command -v dpkg >/dev/null || fail "this test needs a Debian machine (dpkg)"

# --- Refuse to touch a machine that already has webhookd -----------------

status="$(dpkg-query -W -f='${db:Status-Status}' webhookd 2>/dev/null || true)"
if [ -n "$status" ] && [ "$status" != "not-installed" ]; then
  fail "the webhookd package is already on this machine (state: $status); the test would purge it. Remove it first."
fi
[ ! -e /var/lib/webhookd ] || fail "/var/lib/webhookd exists; the test would delete it. Move it away first."
user_existed=no
getent passwd webhookd >/dev/null && user_existed=yes
group_existed=no
getent group webhookd >/dev/null && group_existed=yes

work="$(mktemp -d /tmp/webhookd-pkgtest.XXXXXX)"
runner_pid=""
daemon_pid=""

cleanup() {
  local rc=$?
  set +e
  if [ -n "$runner_pid" ] && kill -0 "$runner_pid" 2>/dev/null; then
    [ -z "$daemon_pid" ] || kill -KILL "$daemon_pid" 2>/dev/null
    kill -KILL "$runner_pid" 2>/dev/null
    wait "$runner_pid" 2>/dev/null
  fi
  if dpkg-query -W -f='${db:Status-Status}' webhookd 2>/dev/null | grep -qv '^not-installed$'; then
    dpkg --purge webhookd >/dev/null 2>&1
  fi
  rm -rf /var/lib/webhookd
  if [ "$user_existed" = no ] && getent passwd webhookd >/dev/null; then userdel webhookd; fi
  if [ "$group_existed" = no ] && getent group webhookd >/dev/null; then groupdel webhookd; fi
  if [ "${WEBHOOKD_PKGTEST_KEEP:-}" = 1 ]; then
    echo "packaging/test.sh: kept the logs, trace and extracted packages in $work" >&2
  else
    rm -rf "$work"
  fi
  if [ "$rc" -eq 0 ]; then
    printf '\npackaging/test.sh: all package checks passed in %ss\n' "$(($(date +%s) - started_at))"
  else
    printf 'packaging/test.sh: failed (exit %s); the machine was cleaned up\n' "$rc" >&2
  fi
}
trap cleanup EXIT

# --- Tools -----------------------------------------------------------------

say "installing what the test needs"
need=()
command -v lintian >/dev/null || need+=(lintian)
command -v rpm >/dev/null || need+=(rpm)
command -v rpm2archive >/dev/null || need+=(rpm2cpio)
command -v strace >/dev/null || need+=(strace)
command -v curl >/dev/null || need+=(curl)
# systemd-analyze verifies the units (systemd need not be running).
{ command -v systemd-analyze && command -v systemd-socket-activate; } >/dev/null || need+=(systemd)
# zsh and fish check the syntax of their completion files.
command -v zsh >/dev/null || need+=(zsh)
command -v fish >/dev/null || need+=(fish)
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# build.sh installs cargo-deb and cargo-generate-rpm (cargo install --locked) if missing.

# --- 1. Build ----------------------------------------------------------------

# The upgrade's package (revision 2) is built first and moved aside:
# cargo-deb deletes other versions of the package from target/debian, and
# the revision-1 packages should be what build.sh leaves in target/.
say "building revision 2 for the upgrade test (packaging/build.sh 2)"
build2_out="$(packaging/build.sh 2)" || fail "packaging/build.sh 2 failed"
mkdir "$work/upgrade"
upgrade_deb="$work/upgrade/$(basename "$(printf '%s\n' "$build2_out" | sed -n 's/^deb: //p')")"
mv "$(printf '%s\n' "$build2_out" | sed -n 's/^deb: //p')" "$upgrade_deb"
mv "$(printf '%s\n' "$build2_out" | sed -n 's/^rpm: //p')" "$work/upgrade/"

say "building both packages (packaging/build.sh)"
build_out="$(packaging/build.sh)" || fail "packaging/build.sh failed"
printf '%s\n' "$build_out"
deb="$(printf '%s\n' "$build_out" | sed -n 's/^deb: //p')"
rpm="$(printf '%s\n' "$build_out" | sed -n 's/^rpm: //p')"
[ -f "$deb" ] && [ -f "$rpm" ] || fail "build.sh did not print the paths of a .deb and an .rpm"
version="$(dpkg-deb -f "$deb" Version)"
say "package sizes: $(du -h "$deb" | cut -f1) $deb, $(du -h "$rpm" | cut -f1) $rpm"

# --- 2. Inspect the .deb -----------------------------------------------------

say "dpkg-deb --info"
dpkg-deb --info "$deb"
[ "$(dpkg-deb -f "$deb" Package)" = webhookd ] || fail ".deb Package is not webhookd"
dpkg-deb -f "$deb" Depends | grep -q 'libc6' || fail ".deb does not depend on libc6"
dpkg-deb -f "$deb" Depends | grep -q 'systemd' || fail ".deb does not depend on systemd (systemd-sysusers)"
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles >"$work/conffiles"
[ "$(cat "$work/conffiles")" = /etc/default/webhookd ] ||
  fail ".deb conffiles should be exactly /etc/default/webhookd, is: $(cat "$work/conffiles")"

say "dpkg-deb --contents"
dpkg-deb --contents "$deb"
# Regular files only, as absolute paths.
dpkg-deb --contents "$deb" | awk '$1 !~ /^d/ { sub(/^\./, "", $6); print $6 }' | sort >"$work/deb.files"
cat >"$work/deb.expected" <<'EOF'
/etc/default/webhookd
/usr/bin/webhookd
/usr/lib/systemd/system/webhookd.service
/usr/lib/sysusers.d/webhookd.conf
/usr/share/bash-completion/completions/webhookd
/usr/share/doc/webhookd/OPERATING.md
/usr/share/doc/webhookd/README.md
/usr/share/doc/webhookd/changelog.Debian.gz
/usr/share/doc/webhookd/copyright
/usr/share/doc/webhookd/examples/razorpay-payment.captured.json
/usr/share/doc/webhookd/examples/razorpay.toml
/usr/share/doc/webhookd/examples/stripe-payment_intent.succeeded.json
/usr/share/doc/webhookd/examples/stripe.toml
/usr/share/doc/webhookd/examples/webhookd.socket
/usr/share/doc/webhookd/grafana/webhookd-dashboard.json
/usr/share/doc/webhookd/webhookd.env
/usr/share/fish/vendor_completions.d/webhookd.fish
/usr/share/man/man8/webhookd.8.gz
/usr/share/zsh/vendor-completions/_webhookd
EOF
diff -u "$work/deb.expected" "$work/deb.files" || fail ".deb does not hold exactly the expected files (diff above)"
mkdir "$work/deb"
dpkg-deb -x "$deb" "$work/deb"
mkdir "$work/debctl"
dpkg-deb -e "$deb" "$work/debctl"
for script in postinst prerm postrm; do
  [ -f "$work/debctl/$script" ] || fail ".deb has no $script"
  sh -n "$work/debctl/$script" || fail ".deb $script is not valid sh"
done
grep -q 'systemd-sysusers.*webhookd.conf' "$work/debctl/postinst" || fail ".deb postinst does not create the webhookd user"
cmp -s "$work/deb/usr/lib/systemd/system/webhookd.service" packaging/webhookd.service || fail "packaged unit differs from packaging/webhookd.service"
cmp -s "$work/deb/etc/default/webhookd" packaging/webhookd.env || fail "packaged env file differs from packaging/webhookd.env"
gzip -dc "$work/deb/usr/share/man/man8/webhookd.8.gz" | cmp -s - packaging/webhookd.8 || fail "packaged man page differs from packaging/webhookd.8"
"$work/deb/usr/bin/webhookd" --version | grep -q '^webhookd ' || fail "packaged binary does not run --version"

say "lintian"
# Accepted warnings, each for a reason:
#  - initial-upload-closes-no-bugs: Debian wants the first upload of a new
#    package to close its ITP bug. webhookd is not uploaded to Debian; its
#    users publish the .deb in their own repositories, so there is no bug.
# Lintian's info-level tags (I:) are not warnings and do not fail the test;
# today they are hardening-no-fortify-functions (Rust does not use glibc's
# _FORTIFY_SOURCE wrappers; its bounds checks do that job),
# no-md5sums-control-file (cargo-deb writes none; dpkg still records the
# files) and package-supports-alternative-init-but-no-init.d-script (the
# service is systemd-only by design: it relies on the unit's sandbox).
accepted_warnings="initial-upload-closes-no-bugs"
lintian "$deb" >"$work/lintian.txt" 2>"$work/lintian.err" || true
cat "$work/lintian.txt"
if grep -v '^running with root privileges' "$work/lintian.err" | grep -q .; then
  cat "$work/lintian.err" >&2
  fail "lintian itself failed"
fi
if grep -q '^E: ' "$work/lintian.txt"; then fail "lintian reports errors (above)"; fi
while read -r line; do
  tag="$(printf '%s\n' "$line" | awk '{ print $3 }')"
  case " $accepted_warnings " in
    *" $tag "*) ;;
    *) fail "lintian warning not explained in packaging/test.sh: $line" ;;
  esac
done < <(grep '^W: ' "$work/lintian.txt" || true)

# --- 7 (first, fast). The .rpm holds the same files with the same bytes -------

say "rpm -qpi"
rpm -qpi "$rpm" | tee "$work/rpm.info"
grep -q '^Name *: webhookd$' "$work/rpm.info" || fail ".rpm Name is not webhookd"
grep -q "^Version *: ${version%-*}\$" "$work/rpm.info" || fail ".rpm Version differs from the .deb's ${version%-*}"
grep -q '^License *: Apache-2.0$' "$work/rpm.info" || fail ".rpm License is not Apache-2.0"
say "rpm -qpl"
rpm -qpl "$rpm" | sort | tee "$work/rpm.files"
cat >"$work/rpm.expected" <<'EOF'
/etc/sysconfig/webhookd
/usr/bin/webhookd
/usr/lib/systemd/system/webhookd.service
/usr/lib/sysusers.d/webhookd.conf
/usr/share/bash-completion/completions/webhookd
/usr/share/doc/webhookd/OPERATING.md
/usr/share/doc/webhookd/README.md
/usr/share/doc/webhookd/changelog
/usr/share/doc/webhookd/examples/razorpay-payment.captured.json
/usr/share/doc/webhookd/examples/razorpay.toml
/usr/share/doc/webhookd/examples/stripe-payment_intent.succeeded.json
/usr/share/doc/webhookd/examples/stripe.toml
/usr/share/doc/webhookd/examples/webhookd.socket
/usr/share/doc/webhookd/grafana/webhookd-dashboard.json
/usr/share/doc/webhookd/webhookd.env
/usr/share/fish/vendor_completions.d/webhookd.fish
/usr/share/licenses/webhookd/LICENSE
/usr/share/man/man8/webhookd.8.gz
/usr/share/zsh/site-functions/_webhookd
EOF
diff -u "$work/rpm.expected" "$work/rpm.files" || fail ".rpm does not hold exactly the expected files (diff above)"
# Same files as the .deb, apart from each format's own places: the env file
# (/etc/default vs /etc/sysconfig), zsh completions (Debian's
# vendor-completions vs site-functions), and the copyright and changelog
# (Debian: copyright + changelog.Debian.gz; RPM: /usr/share/licenses + a
# plain changelog).
sed -e 's|^/etc/default/webhookd$|/etc/sysconfig/webhookd|' \
  -e 's|^/usr/share/zsh/vendor-completions/_webhookd$|/usr/share/zsh/site-functions/_webhookd|' \
  -e '\|^/usr/share/doc/webhookd/copyright$|d' -e '\|^/usr/share/doc/webhookd/changelog.Debian.gz$|d' \
  "$work/deb.files" >"$work/deb.common"
sed -e '\|^/usr/share/licenses/webhookd/LICENSE$|d' -e '\|^/usr/share/doc/webhookd/changelog$|d' \
  "$work/rpm.files" >"$work/rpm.common"
diff -u "$work/deb.common" "$work/rpm.common" || fail "the .deb and the .rpm hold different files (diff above)"
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm" | grep -qx 'cn /etc/sysconfig/webhookd' ||
  fail "/etc/sysconfig/webhookd is not %config(noreplace) in the .rpm"
rpm -qpR "$rpm" | grep -qx systemd || fail ".rpm does not require systemd"
rpm -qp --scripts "$rpm" | grep -q 'systemd-sysusers /usr/lib/sysusers.d/webhookd.conf' ||
  fail ".rpm %post does not create the webhookd user"
for tag in POSTIN PREUN POSTUN; do
  rpm -qp --qf "%{$tag}" "$rpm" >"$work/rpm.$tag.sh"
  [ "$(cat "$work/rpm.$tag.sh")" != "(none)" ] || fail ".rpm has no %$tag scriptlet"
  sh -n "$work/rpm.$tag.sh" || fail ".rpm %$tag scriptlet is not valid sh"
done
mkdir "$work/rpm"
rpm2archive -n - <"$rpm" | tar -xf - -C "$work/rpm"
while read -r file; do
  deb_file="$file"
  [ "$file" != /etc/sysconfig/webhookd ] || deb_file=/etc/default/webhookd
  [ "$file" != /usr/share/zsh/site-functions/_webhookd ] || deb_file=/usr/share/zsh/vendor-completions/_webhookd
  cmp -s "$work/rpm$file" "$work/deb$deb_file" || fail "$file differs between the .rpm and the .deb"
done <"$work/rpm.common"
cmp -s "$work/rpm/usr/share/licenses/webhookd/LICENSE" LICENSE || fail ".rpm LICENSE differs from LICENSE"
say "the .rpm holds the same $(wc -l <"$work/rpm.common") files as the .deb, byte for byte, plus its license and changelog"

# --- 3. Install ----------------------------------------------------------------

# not_started_message LOG WORD: where systemd is not running, the postinst
# must say that the service was not WORD (started, restarted); where it runs,
# it must not.
not_started_message() {
  if [ -d /run/systemd/system ]; then
    ! grep -q "webhookd.service was not $2" "$1" || fail "dpkg says the service was not $2, but systemd is running"
  else
    grep -q "systemd is not running, so webhookd.service was not $2" "$1" ||
      fail "dpkg did not say that webhookd.service was not $2 (systemd is not running here)"
    say "dpkg said: $(grep 'webhookd.service was not' "$1")"
  fi
}

say "dpkg -i $deb"
dpkg -i "$deb" </dev/null >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "dpkg -i $deb failed"; }
cat "$work/install.log"
not_started_message "$work/install.log" started
[ "$(dpkg-query -W -f='${Status} ${Version}' webhookd)" = "install ok installed $version" ] ||
  fail "dpkg does not show webhookd $version as installed"
unit=/usr/lib/systemd/system/webhookd.service
[ -f "$unit" ] || fail "$unit is not installed"
getent passwd webhookd >/dev/null || fail "installing did not create the webhookd user"
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd webhookd)
[ "$uid" -lt 1000 ] || fail "webhookd is not a system user (uid $uid)"
case "$shell" in */nologin | /bin/false) ;; *) fail "webhookd has a login shell: $shell" ;; esac
[ "$home" = /var/lib/webhookd ] || fail "webhookd's home is $home, not /var/lib/webhookd"
say "service user: webhookd uid=$uid gid=$gid home=$home shell=$shell"
[ -L /etc/systemd/system/multi-user.target.wants/webhookd.service ] ||
  fail "the service is not enabled (no multi-user.target.wants link)"
dpkg-query -W -f='${Conffiles}\n' webhookd | grep -q '/etc/default/webhookd' || fail "/etc/default/webhookd is not a conffile"
man -w webhookd >/dev/null 2>&1 || [ -f /usr/share/man/man8/webhookd.8.gz ] || fail "man page not installed"

command -v systemd-analyze >/dev/null || fail "systemd-analyze is missing (Debian's systemd package)"
say "systemd-analyze verify $unit"
systemd-analyze verify "$unit" || fail "systemd-analyze verify rejects the unit"
security="$(systemd-analyze security --offline=true "$unit" 2>&1 | tail -n 1)"
say "systemd-analyze security: $security"
exposure="$(printf '%s\n' "$security" | sed -n 's/.*: \([0-9.]*\) .*/\1/p')"
# 1.0 today; anything above "OK" territory means hardening was lost.
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 1.5) }' ||
  fail "systemd-analyze security exposure is '$exposure', expected at most 1.5"

# systemd integration: notify and watchdog in the unit; the socket unit
# shipped as an example, verified, and not enabled by the package.
grep -qx 'Type=notify' "$unit" && grep -qx 'NotifyAccess=main' "$unit" && grep -q '^WatchdogSec=[1-9]' "$unit" ||
  fail "$unit lacks Type=notify, NotifyAccess=main or a WatchdogSec="
socket_example=/usr/share/doc/webhookd/examples/webhookd.socket
[ -f "$socket_example" ] || fail "$socket_example is not installed"
[ ! -e /usr/lib/systemd/system/webhookd.socket ] && [ ! -e /etc/systemd/system/sockets.target.wants/webhookd.socket ] ||
  fail "webhookd.socket is installed or enabled as a unit; socket activation must stay optional"
mkdir "$work/units"
cp "$socket_example" "$work/units/webhookd.socket"
say "systemd-analyze verify webhookd.socket (with the installed webhookd.service)"
systemd-analyze verify "$work/units/webhookd.socket" || fail "systemd-analyze verify rejects webhookd.socket"
# The installed binary under systemd's own socket activator: the socket is
# bound by systemd-socket-activate, which execs webhookd on the first
# connection with it as fd 3 (LISTEN_FDS); that connection is answered.
command -v systemd-socket-activate >/dev/null || fail "systemd-socket-activate is missing (Debian's systemd package)"
activate_port="$(awk -v seed="$$" 'BEGIN { srand(seed); print 20000 + int(rand() * 20000) }')"
systemd-socket-activate -l "127.0.0.1:$activate_port" /usr/bin/webhookd --data-dir "$work/activated" \
  --listen 127.0.0.1:0 >"$work/activate.log" 2>&1 &
activate_pid=$!
deadline=$((SECONDS + 10))
until grep -q "Listening on 127.0.0.1:$activate_port" "$work/activate.log"; do
  kill -0 "$activate_pid" 2>/dev/null || { cat "$work/activate.log" >&2; fail "systemd-socket-activate exited"; }
  [ "$SECONDS" -lt "$deadline" ] || { kill "$activate_pid"; fail "systemd-socket-activate did not listen within 10 s"; }
  sleep 0.05
done
body="$(curl -sS --max-time 10 "http://127.0.0.1:$activate_port/" || true)"
kill -TERM "$activate_pid" 2>/dev/null || true
activate_rc=0
wait "$activate_pid" || activate_rc=$?
printf '%s\n' "$body" | grep -q '"status":"HEALTHY"' || { cat "$work/activate.log" >&2; fail "socket-activated webhookd answered: $body"; }
grep -q -- '--listen is not used' "$work/activate.log" || fail "socket-activated webhookd did not serve the passed socket"
[ "$activate_rc" -eq 0 ] || fail "socket-activated webhookd exited $activate_rc after SIGTERM"
say "socket activation: webhookd served the socket systemd-socket-activate passed, exited 0 on SIGTERM"

# Shell completions, where bash, zsh and fish look for them.
for file in /usr/share/bash-completion/completions/webhookd /usr/share/zsh/vendor-completions/_webhookd \
  /usr/share/fish/vendor_completions.d/webhookd.fish; do
  [ -f "$file" ] || fail "$file is not installed"
done
bash -c 'source /usr/share/bash-completion/completions/webhookd && complete -p webhookd' >/dev/null ||
  fail "bash cannot source /usr/share/bash-completion/completions/webhookd"
zsh -n /usr/share/zsh/vendor-completions/_webhookd || fail "zsh -n rejects _webhookd"
fish -n /usr/share/fish/vendor_completions.d/webhookd.fish || fail "fish -n rejects webhookd.fish"
[ -s /usr/share/doc/webhookd/grafana/webhookd-dashboard.json ] || fail "the Grafana dashboard is not installed"
say "completions for bash, zsh and fish installed (bash sources its file); Grafana dashboard in /usr/share/doc/webhookd/grafana/"

# --- 4. Run it the way the unit does --------------------------------------------

# The unit's own settings, read from the installed file.
unit_value() { sed -n "s/^$1=//p" "$unit"; }
exec_start="$(unit_value ExecStart)"
svc_user="$(unit_value User)"
svc_group="$(unit_value Group)"
svc_umask="$(unit_value UMask)"
state_dir="/var/lib/$(unit_value StateDirectory)"
state_mode="$(unit_value StateDirectoryMode)"
[ "$exec_start" = "/usr/bin/webhookd --data-dir /var/lib/webhookd" ] || fail "unexpected ExecStart: $exec_start"
[ "$svc_user" = webhookd ] && [ "$svc_group" = webhookd ] || fail "unit does not run as webhookd:webhookd"
[ "$state_dir" = /var/lib/webhookd ] || fail "unit StateDirectory is not /var/lib/webhookd"

# The operator's settings, as a user would edit the env file: a free port,
# and a 1 s processing delay (with the default 30 s, "processed within a
# few seconds" below proves the file was read).
envfile=/etc/default/webhookd
sed -i -e 's|^#WEBHOOKD_LISTEN=.*|WEBHOOKD_LISTEN=127.0.0.1:0|' \
  -e 's|^#WEBHOOKD_PROCESS_DELAY=.*|WEBHOOKD_PROCESS_DELAY=1s|' "$envfile"
grep -qx 'WEBHOOKD_LISTEN=127.0.0.1:0' "$envfile" && grep -qx 'WEBHOOKD_PROCESS_DELAY=1s' "$envfile" ||
  fail "could not set WEBHOOKD_LISTEN and WEBHOOKD_PROCESS_DELAY in $envfile"
cp "$envfile" "$work/envfile.edited"

# StateDirectory=webhookd with StateDirectoryMode: systemd creates it owned
# by User/Group before starting the service.
install -d -o "$svc_user" -g "$svc_group" -m "$state_mode" "$state_dir"

# start_like_unit LOG [strace TRACE]: starts ExecStart as the unit would
# (User/Group, no new privileges and no capabilities, UMask, cwd /, an
# environment of systemd's basics plus every EnvironmentFile=), waits for
# the ready line and sets $addr, $daemon_pid and $runner_pid.
start_like_unit() {
  local log="$1" env_args=() file
  env_args=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin HOME="$home" USER="$svc_user" LOGNAME="$svc_user" SHELL="$shell")
  while read -r file; do
    file="${file#-}"
    [ -f "$file" ] || continue
    while IFS= read -r line; do env_args+=("$line"); done < <(grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$file")
  done < <(unit_value EnvironmentFile)
  # shellcheck disable=SC2206 # ExecStart is split into words as systemd does (no quoting in ours).
  local cmd=(setpriv --reuid="$svc_user" --regid="$svc_group" --init-groups --no-new-privs
    --inh-caps=-all --bounding-set=-all -- env -i "${env_args[@]}" $exec_start)
  if [ "${2:-}" = strace ]; then cmd=(strace -f -qq -o "$3" "${cmd[@]}"); fi
  local t0
  t0=$(date +%s%N)
  (umask "$svc_umask" && cd / && exec "${cmd[@]}") </dev/null >/dev/null 2>"$log" &
  runner_pid=$!
  local deadline=$((SECONDS + 30))
  addr=""
  while [ -z "$addr" ]; do
    kill -0 "$runner_pid" 2>/dev/null || { cat "$log" >&2; fail "webhookd exited during start-up (log above)"; }
    [ "$SECONDS" -lt "$deadline" ] || { cat "$log" >&2; fail "webhookd did not log 'listening on' within 30 s"; }
    addr="$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$log" | head -n 1)"
    [ -n "$addr" ] || sleep 0.05
  done
  start_ms=$((($(date +%s%N) - t0) / 1000000))
  daemon_pid="$runner_pid"
  if [ "${2:-}" = strace ]; then
    daemon_pid="$(cat "/proc/$runner_pid/task/$runner_pid/children" | awk '{ print $1 }')"
  fi
  [ "$(stat -c %U "/proc/$daemon_pid")" = "$svc_user" ] || fail "webhookd runs as $(stat -c %U "/proc/$daemon_pid"), not $svc_user"
  say "webhookd (pid $daemon_pid, user $svc_user) listening on $addr after ${start_ms} ms"
}

# stop_like_unit: KillSignal=SIGTERM, then expects exit 0 within TimeoutStopSec.
stop_like_unit() {
  local t0 rc=0 timeout
  timeout="$(unit_value TimeoutStopSec)"
  t0=$(date +%s%N)
  kill -TERM "$daemon_pid"
  local deadline=$((SECONDS + ${timeout%s}))
  while kill -0 "$daemon_pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail "webhookd did not exit within TimeoutStopSec=$timeout after SIGTERM"
    sleep 0.02
  done
  wait "$runner_pid" || rc=$?
  stop_ms=$((($(date +%s%N) - t0) / 1000000))
  runner_pid=""
  [ "$rc" -eq 0 ] || fail "webhookd exited with $rc after SIGTERM, not 0"
  say "SIGTERM: webhookd exited 0 after ${stop_ms} ms"
}

# http ARGS...: prints the status code (000 if there was no answer), body in $work/body.
http() { curl -sS --max-time 10 -o "$work/body" -w '%{http_code}' "$@" || true; }
txn='{"transaction_id":"txn_pkgtest_1","source_account":"acc_user_789","destination_account":"acc_merchant_456","amount":1500.50,"currency":"INR"}'

say "starting webhookd as the unit would, under strace"
start_like_unit "$work/run1.log" strace "$work/trace"
base="http://$addr"
code="$(http "$base/")"
[ "$code" = 200 ] && grep -q '"status":"HEALTHY"' "$work/body" || fail "health: $code $(cat "$work/body")"
say "GET / -> $code $(cat "$work/body")"
code="$(http -X POST -H 'Content-Type: application/json' -d "$txn" "$base/v1/webhooks/transactions")"
[ "$code" = 202 ] && grep -q '"duplicate":false' "$work/body" || fail "POST: $code $(cat "$work/body")"
say "POST /v1/webhooks/transactions -> $code $(cat "$work/body")"
code="$(http "$base/v1/transactions/txn_pkgtest_1")"
[ "$code" = 200 ] && grep -q '"amount":1500.5' "$work/body" || fail "GET: $code $(cat "$work/body")"
say "GET /v1/transactions/txn_pkgtest_1 -> $code $(cat "$work/body")"
deadline=$((SECONDS + 20))
until grep -q '"status":"PROCESSED"' "$work/body"; do
  [ "$SECONDS" -lt "$deadline" ] || fail "not PROCESSED within 20 s with WEBHOOKD_PROCESS_DELAY=1s: $(cat "$work/body")"
  sleep 0.2
  http "$base/v1/transactions/txn_pkgtest_1" >/dev/null
done
cp "$work/body" "$work/processed.json"
say "processed: $(cat "$work/processed.json")"
stop_like_unit
sed 's/^/    log: /' "$work/run1.log"

db="$state_dir/webhookd.redb"
[ -f "$db" ] || fail "no database at $db"
[ "$(stat -c '%U:%G %a' "$db")" = "webhookd:webhookd 600" ] ||
  fail "$db is $(stat -c '%U:%G %a' "$db"), expected webhookd:webhookd 600 (UMask=0077)"

say "checking the trace against the unit's sandbox"
# Only what /usr/bin/webhookd did: systemd applies the sandbox before
# execve, so everything from that execve on counts, setpriv's work before it does not.
awk 'seen || /execve\("\/usr\/bin\/webhookd"/ { seen = 1; print }' "$work/trace" >"$work/trace.daemon"
[ -s "$work/trace.daemon" ] || fail "the trace has no execve of /usr/bin/webhookd"

# SystemCallFilter: the allow-list groups minus the ~ groups, as systemd
# computes it (@default is always allowed).
expand_syscalls() {
  local item
  for item in "$@"; do
    case "$item" in
      @*) systemd-analyze syscall-filter "$item" | tail -n +2 | grep -v '^ *#' | awk 'NF { print $1 }' |
        while read -r sub; do expand_syscalls "$sub"; done ;;
      *) printf '%s\n' "$item" ;;
    esac
  done
}
allow=(@default)
deny=()
while read -r value; do
  case "$value" in
    "~"*) read -ra items <<<"${value#\~}"; deny+=("${items[@]}") ;;
    *) read -ra items <<<"$value"; allow+=("${items[@]}") ;;
  esac
done < <(unit_value SystemCallFilter)
expand_syscalls "${allow[@]}" | sort -u >"$work/allowed.raw"
expand_syscalls "${deny[@]}" | sort -u >"$work/denied"
comm -23 "$work/allowed.raw" "$work/denied" >"$work/allowed"
sed -nE 's/^[0-9]+ +([a-z0-9_]+)\(.*/\1/p' "$work/trace.daemon" | sort -u >"$work/used"
forbidden="$(comm -23 "$work/used" "$work/allowed" | tr '\n' ' ')"
[ -z "$forbidden" ] || fail "SystemCallFilter would refuse these system calls webhookd made: $forbidden"
say "SystemCallFilter: all $(wc -l <"$work/used") system calls webhookd made are allowed"

# RestrictAddressFamilies.
families="$(unit_value RestrictAddressFamilies)"
while read -r family; do
  case " $families " in *" $family "*) ;; *) fail "RestrictAddressFamilies would refuse socket($family)" ;; esac
done < <(grep -oE '(socket|socketpair)\(AF_[A-Z0-9]+' "$work/trace.daemon" | sed 's/.*(//' | sort -u)
say "RestrictAddressFamilies: families used: $(grep -oE '(socket|socketpair)\(AF_[A-Z0-9]+' "$work/trace.daemon" | sed 's/.*(//' | sort -u | tr '\n' ' ')"

# MemoryDenyWriteExecute: no writable+executable mapping, no PROT_EXEC added later.
if grep -E '(mmap|mmap2)\(.*PROT_WRITE\|PROT_EXEC|(mprotect|pkey_mprotect)\(.*PROT_EXEC' "$work/trace.daemon"; then
  fail "MemoryDenyWriteExecute would refuse the mappings above"
fi
# RestrictNamespaces, LockPersonality, RestrictSUIDSGID.
if grep -E '(unshare|setns)\(|CLONE_NEW' "$work/trace.daemon"; then fail "RestrictNamespaces would refuse the calls above"; fi
if grep -E 'personality\(' "$work/trace.daemon" | grep -v 'personality(0xffffffff)'; then
  fail "LockPersonality would refuse the personality change above"
fi
if grep -E '(chmod|fchmod|fchmodat)\(.*\b0[2-7][0-7]{3}\)' "$work/trace.daemon"; then fail "RestrictSUIDSGID would refuse the calls above"; fi
# ProtectSystem=strict, ProtectHome, PrivateDevices, ProtectProc/ProcSubset:
# every path it touched for writing is under its StateDirectory (or the
# private /tmp); it used no
# home directory, no device but the pseudo-devices PrivateDevices keeps, and
# no /proc file outside its own process.
sed -nE 's/^[0-9]+ +(open|openat|openat2|creat|mkdir|mkdirat|rename|renameat|renameat2|unlink|unlinkat|link|linkat|symlink|symlinkat|truncate|chmod|fchmodat|chown|fchownat)\((AT_FDCWD, |[0-9]+, )?"([^"]*)"(.*)$/\1 \3 \4/p' \
  "$work/trace.daemon" >"$work/paths"
awk '
  $1 ~ /^open/ && $0 !~ /O_WRONLY|O_RDWR|O_CREAT|O_TRUNC/ { next }
  $2 == "/var/lib/webhookd" || index($2, "/var/lib/webhookd/") == 1 { next }
  $2 == "/dev/null" { next }
  # PrivateTmp=yes gives the service its own writable /tmp and /var/tmp.
  index($2, "/tmp/") == 1 || index($2, "/var/tmp/") == 1 { next }
  { print }' "$work/paths" >"$work/writes-outside"
[ ! -s "$work/writes-outside" ] || { cat "$work/writes-outside" >&2; fail "ProtectSystem=strict would refuse these writes outside /var/lib/webhookd"; }
awk '$2 ~ /^\/(home|root|run\/user)(\/|$)/' "$work/paths" | grep . && fail "ProtectHome would hide the paths above"
awk '$2 ~ /^\/dev\// && $2 !~ /^\/dev\/(null|zero|full|random|urandom|tty|ptmx|pts\/|shm\/)/' "$work/paths" | grep . &&
  fail "PrivateDevices would hide the devices above"
awk '$2 ~ /^\/proc\// && $2 !~ /^\/proc\/(self|thread-self|[0-9]+)(\/|$)/' "$work/paths" | grep . &&
  fail "ProcSubset=pid would hide the /proc files above"
say "sandbox: no write outside /var/lib/webhookd, no W+X memory, no namespaces, no devices, no other /proc"

# --- 5. Upgrade ------------------------------------------------------------------

version2="$(dpkg-deb -f "$upgrade_deb" Version)"
dpkg --compare-versions "$version2" gt "$version" || fail "rebuilt version $version2 is not higher than $version"
db_sum="$(sha256sum <"$db")"
say "dpkg -i $upgrade_deb ($version -> $version2)"
dpkg -i "$upgrade_deb" </dev/null >"$work/upgrade.log" 2>&1 || { cat "$work/upgrade.log"; fail "dpkg -i $upgrade_deb (upgrade) failed"; }
cat "$work/upgrade.log"
not_started_message "$work/upgrade.log" restarted
[ "$(dpkg-query -W -f='${Version}' webhookd)" = "$version2" ] || fail "upgrade did not install $version2"
cmp -s "$envfile" "$work/envfile.edited" || fail "the upgrade changed the edited $envfile"
ls /etc/default/webhookd.dpkg-* 2>/dev/null && fail "the upgrade left dpkg conffile copies (above)"
[ "$(sha256sum <"$db")" = "$db_sum" ] || fail "the upgrade changed $db"
[ "$(stat -c '%U:%G %a' "$db")" = "webhookd:webhookd 600" ] || fail "the upgrade changed the owner or mode of $db"
[ "$(id -u webhookd)" = "$uid" ] || fail "the upgrade changed webhookd's uid"
say "upgrade kept the edited env file and the database"

say "starting the upgraded webhookd"
start_like_unit "$work/run2.log"
base="http://$addr"
code="$(http "$base/v1/transactions/txn_pkgtest_1")"
[ "$code" = 200 ] && cmp -s "$work/body" "$work/processed.json" ||
  fail "after the upgrade the transaction reads $code $(cat "$work/body"), before: $(cat "$work/processed.json")"
code="$(http -X POST -H 'Content-Type: application/json' -d "$txn" "$base/v1/webhooks/transactions")"
[ "$code" = 202 ] && grep -q '"duplicate":true' "$work/body" && grep -q '"status":"PROCESSED"' "$work/body" ||
  fail "redelivery after the upgrade: $code $(cat "$work/body")"
say "after the upgrade: same PROCESSED record, redelivery answered as a duplicate"
stop_like_unit
db_sum="$(sha256sum <"$db")"
say "timings for README (Backup): start-to-ready ${start_ms} ms, SIGTERM-to-exit ${stop_ms} ms"

# --- 6. Remove, then purge -------------------------------------------------------

wants=/etc/systemd/system/multi-user.target.wants/webhookd.service
mask=/etc/systemd/system/webhookd.service
say "dpkg -r webhookd"
dpkg -r webhookd >"$work/remove.log" 2>&1 || { cat "$work/remove.log"; fail "dpkg -r webhookd failed"; }
cat "$work/remove.log"
[ "$(dpkg-query -W -f='${db:Status-Status}' webhookd 2>/dev/null)" = config-files ] ||
  fail "after dpkg -r, dpkg does not keep webhookd's configuration files"
for gone in /usr/bin/webhookd "$unit" /usr/lib/sysusers.d/webhookd.conf /usr/share/man/man8/webhookd.8.gz; do
  [ ! -e "$gone" ] || fail "dpkg -r left $gone behind"
done
# Kept until purge, as is usual on Debian: the settings file, the
# enablement link (so a reinstall is enabled again), and a mask that keeps
# the removed unit from being started meanwhile.
cmp -s "$envfile" "$work/envfile.edited" || fail "dpkg -r changed or removed the edited $envfile"
[ -L "$wants" ] || fail "dpkg -r removed the enablement link $wants (the README says it stays until purge)"
[ "$(readlink "$mask")" = /dev/null ] || fail "dpkg -r did not mask webhookd.service ($mask)"
[ -f "$db" ] && [ "$(sha256sum <"$db")" = "$db_sum" ] || fail "dpkg -r removed or changed $db"
say "dpkg -r removed the package's files; kept $envfile, the enablement link, a mask and $db"

say "dpkg --purge webhookd"
dpkg --purge webhookd >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "dpkg --purge webhookd failed"; }
cat "$work/purge.log"
status="$(dpkg-query -W -f='${db:Status-Status}' webhookd 2>/dev/null || true)"
[ -z "$status" ] || [ "$status" = not-installed ] || fail "after purge dpkg still has webhookd as '$status'"
# Removed: everything the package installed, its conffile, and the
# enablement symlinks deb-systemd-helper made.
for gone in /usr/bin/webhookd "$unit" /usr/lib/sysusers.d/webhookd.conf /usr/share/man/man8/webhookd.8.gz \
  /usr/share/bash-completion/completions/webhookd /usr/share/zsh/vendor-completions/_webhookd \
  /usr/share/fish/vendor_completions.d/webhookd.fish \
  /usr/share/doc/webhookd /etc/default/webhookd "$wants" "$mask"; do
  [ ! -e "$gone" ] && [ ! -L "$gone" ] || fail "purge left $gone behind"
done
# Kept on purpose (see packaging/debian/postrm): the database, which holds
# payment transactions, and the webhookd user that owns it.
[ -f "$db" ] && [ "$(sha256sum <"$db")" = "$db_sum" ] || fail "purge removed or changed $db; it must keep the data"
getent passwd webhookd >/dev/null || fail "purge removed the webhookd user, which still owns $state_dir"
grep -q 'keeps the database in /var/lib/webhookd' "$work/purge.log" || fail "purge did not say that it keeps the database"
say "purge removed the package's files, /etc/default/webhookd, the enablement and the mask; kept $db and the webhookd user"
