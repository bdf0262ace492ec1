# webhookd %preun ($1: 0 when the package is erased, 1 on upgrade).
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now webhookd.service >/dev/null 2>&1 || :
fi
