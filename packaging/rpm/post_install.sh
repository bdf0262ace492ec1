# webhookd %post ($1: 1 on first install, 2 on upgrade).
# The system user comes from the sysusers.d file this package installed;
# useradd is the fallback where systemd-sysusers is missing.
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers /usr/lib/sysusers.d/webhookd.conf || :
fi
if ! getent passwd webhookd >/dev/null; then
    getent group webhookd >/dev/null || groupadd -r webhookd
    useradd -r -g webhookd -d /var/lib/webhookd -s /sbin/nologin \
        -c "webhookd payment webhook receiver" webhookd
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
# Like the .deb: enabled on first install, so it starts at boot, and
# started now when systemd is running (not in a chroot or image build).
# Upgrades restart it from %postun instead.
if [ "$1" -eq 1 ]; then
    systemctl --no-reload enable webhookd.service >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
        systemctl start webhookd.service >/dev/null 2>&1 || :
    else
        echo "webhookd: systemd is not running, so webhookd.service was not started; it is enabled and starts at the next boot with systemd." >&2
    fi
fi
