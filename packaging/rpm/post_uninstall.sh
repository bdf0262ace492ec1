# webhookd %postun ($1: 0 when the package is erased, 1 on upgrade).
# Erasing keeps /var/lib/webhookd (the transactions), the webhookd user and
# a modified /etc/sysconfig/webhookd (saved as .rpmsave), as rpm does.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    # Upgrade: restart on the new binary (data and settings are kept).
    if [ "$1" -ge 1 ]; then
        systemctl try-restart webhookd.service >/dev/null 2>&1 || :
    fi
fi
