# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_webhookd_global_optspecs
    string join \n data-dir= q/quiet listen= process-delay= max-body-bytes= shutdown-grace= retention= dedup-window= max-connections= header-read-timeout= body-read-timeout= write-timeout= signature-scheme= signing-secrets-file= signature-header= payload-map= tls-cert= tls-key= admin-token-file= access-log log-format= queue-depth= admin-listen= deliver-to= deliver-timeout= deliver-concurrency= retry-schedule= deliver-signing-secret-file= deliver-body= deliver-ca-file= deliver-client-cert= deliver-client-key= h/help V/version
end

function __fish_webhookd_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_webhookd_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_webhookd_using_subcommand
    set -l cmd (__fish_webhookd_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c webhookd -n "__fish_webhookd_needs_command" -l data-dir -d 'Directory of the embedded database; created if missing' -r -F
complete -c webhookd -n "__fish_webhookd_needs_command" -l listen -d 'Socket address to listen on; port 0 picks a free port' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l process-delay -d 'How long after acceptance a transaction is processed (humantime: 30s, 500ms, 2m, 0s)' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l max-body-bytes -d 'Request bodies larger than this are refused with 413' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l shutdown-grace -d 'How long in-flight requests may finish after SIGTERM/SIGINT' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l retention -d 'Delete PROCESSED transactions once their `processed_at` is older than this (off when not set). A purged `transaction_id` stays deduplicated for --dedup-window after its purge' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l dedup-window -d 'With --retention: how long after its purge a `transaction_id` is still deduplicated (a redelivery or replay is answered as a duplicate and processed no more); after it, the id is new again' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l max-connections -d 'Most connections served at once; more clients wait in the listen backlog' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l header-read-timeout -d 'A request head must arrive within this time; also closes idle keep-alive connections' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l body-read-timeout -d 'A request body must arrive within this time, else 408' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l write-timeout -d 'A connection whose answers the client leaves unread for this long (the server cannot write to it) is closed' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l signature-scheme -d 'Verify webhook signatures with this scheme (off when not set); POSTs without a valid signature get 401 and are not stored' -r -f -a "standard-webhooks\t'Standard Webhooks (Svix): `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>` (or the same as `svix-*`); signs `{id}.{timestamp}.{body}`'
stripe\t'Stripe: `Stripe-Signature: t=<unix>,v1=<hex>`; signs `{t}.{body}`'
hmac-sha256\t'Hex HMAC-SHA256 of the body in the header named by `--signature-header`'"
complete -c webhookd -n "__fish_webhookd_needs_command" -l signing-secrets-file -d 'File with the signing secrets, one per line (any one may match, so secrets can be rotated); `whsec_<base64>` for standard-webhooks. Given with --signature-scheme, never without' -r -F
complete -c webhookd -n "__fish_webhookd_needs_command" -l signature-header -d 'Header carrying the hex signature (e.g. X-Razorpay-Signature): required by --signature-scheme hmac-sha256, refused with the others' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l payload-map -d 'Map each webhook body onto a transaction with this TOML file: where the body holds each field (JSON pointers), minor or major units, which events to take (e.g. Stripe\'s or Razorpay\'s; see /usr/share/doc/webhookd/examples). The body is kept with its transaction. Without it, bodies must be webhookd\'s own shape' -r -F
complete -c webhookd -n "__fish_webhookd_needs_command" -l tls-cert -d 'Serve HTTPS (TLS 1.2 and 1.3; HTTP/2 and HTTP/1.1) on --listen with this PEM certificate chain, the server\'s certificate first. Given with --tls-key, never without; SIGHUP reloads both' -r -F
complete -c webhookd -n "__fish_webhookd_needs_command" -l tls-key -d 'The PEM private key of --tls-cert\'s first certificate (PKCS#8, PKCS#1 RSA or SEC1 EC). Given with --tls-cert, never without' -r -F
complete -c webhookd -n "__fish_webhookd_needs_command" -l admin-token-file -d 'File with the admin token, one per line (any listed token is accepted; blank lines and # comments ignored). Admin routes (all but GET / and the webhook POST) then need `Authorization: Bearer <token>`, else 401. SIGHUP reloads it' -r -F
complete -c webhookd -n "__fish_webhookd_needs_command" -l log-format -d 'Log line format; the level comes from `RUST_LOG` (default info)' -r -f -a "text\t'Human-readable lines'
json\t'One JSON object per line'"
complete -c webhookd -n "__fish_webhookd_needs_command" -l queue-depth -d 'Capacity of the queue in front of the store writer; when it is full, webhooks are answered 503 with Retry-After instead of queueing without bound' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l admin-listen -d 'A second socket for the admin routes (reads by id, listing, metrics, attempts, redelivery); --listen then serves only `GET /` and webhooks' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l deliver-to -d 'Deliver each transaction once due with a POST to this `http://` or `https://` URL; it is PROCESSED only after a 2xx answer (off when not set)' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l deliver-timeout -d 'With --deliver-to: how long one attempt may take, from connecting to the end of the answer' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l deliver-concurrency -d 'With --deliver-to: most delivery attempts in flight at once' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l retry-schedule -d 'With --deliver-to: the wait before each attempt, comma-separated; the first counts from the due time, each later one from the end of the attempt before; as many attempts as entries, then FAILED. Non-zero waits get ±20% jitter' -r
complete -c webhookd -n "__fish_webhookd_needs_command" -l deliver-signing-secret-file -d 'With --deliver-to: file of `whsec_…` secrets, one a line; every delivery is signed (Standard Webhooks) with each of them' -r -F
complete -c webhookd -n "__fish_webhookd_needs_command" -l deliver-body -d 'With --deliver-to: what each delivery carries: `transaction`, webhookd\'s JSON; `original`, the body as received from the provider with its Content-Type (needs --payload-map, which keeps it; a transaction stored without one is sent as `transaction`)' -r -f -a "transaction\t'webhookd\'s JSON of the transaction'
original\t'The body as received from the provider, with its `Content-Type` (needs --payload-map, which keeps it)'"
complete -c webhookd -n "__fish_webhookd_needs_command" -l deliver-ca-file -d 'With an https:// --deliver-to: PEM certificates to trust instead of the system\'s roots' -r -F
complete -c webhookd -n "__fish_webhookd_needs_command" -l deliver-client-cert -d 'With an https:// --deliver-to: PEM client certificate chain for mutual TLS; needs --deliver-client-key' -r -F
complete -c webhookd -n "__fish_webhookd_needs_command" -l deliver-client-key -d 'With an https:// --deliver-to: PEM private key of --deliver-client-cert' -r -F
complete -c webhookd -n "__fish_webhookd_needs_command" -s q -l quiet -d 'No progress bars: `export`, `check`, `backup` and a migration at start draw one on stderr when it is a terminal (never otherwise)'
complete -c webhookd -n "__fish_webhookd_needs_command" -l access-log -d 'Log one line per request (method, path, status, latency, transaction id; never payloads or signatures)'
complete -c webhookd -n "__fish_webhookd_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c webhookd -n "__fish_webhookd_needs_command" -s V -l version -d 'Print version'
complete -c webhookd -n "__fish_webhookd_needs_command" -f -a "inspect" -d 'Print one stored transaction as JSON, as `GET /v1/transactions/{id}` shows it'
complete -c webhookd -n "__fish_webhookd_needs_command" -f -a "export" -d 'Write every stored transaction to stdout, one JSON object per line, in arrival order'
complete -c webhookd -n "__fish_webhookd_needs_command" -f -a "check" -d 'Verify every page\'s checksum (without changing the file), that every record decodes and every pending job matches a PROCESSING transaction (and the reverse); exit 1 on damage'
complete -c webhookd -n "__fish_webhookd_needs_command" -f -a "backup" -d 'Write a consistent, fsync\'d copy of the database file to DEST (not while the daemon runs: redb locks the file)'
complete -c webhookd -n "__fish_webhookd_needs_command" -f -a "check-map" -d 'Print the transaction SAMPLE would become under the payload map FILE, or the answer that would refuse it (no data dir or daemon needed); exit 1 if it would be refused, 2 if FILE does not load'
complete -c webhookd -n "__fish_webhookd_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c webhookd -n "__fish_webhookd_using_subcommand inspect" -l data-dir -d 'Directory of the embedded database; created if missing' -r -F
complete -c webhookd -n "__fish_webhookd_using_subcommand inspect" -s q -l quiet -d 'No progress bars: `export`, `check`, `backup` and a migration at start draw one on stderr when it is a terminal (never otherwise)'
complete -c webhookd -n "__fish_webhookd_using_subcommand inspect" -s h -l help -d 'Print help'
complete -c webhookd -n "__fish_webhookd_using_subcommand export" -l format -d 'Output format' -r -f -a "jsonl\t'JSON lines'"
complete -c webhookd -n "__fish_webhookd_using_subcommand export" -l data-dir -d 'Directory of the embedded database; created if missing' -r -F
complete -c webhookd -n "__fish_webhookd_using_subcommand export" -s q -l quiet -d 'No progress bars: `export`, `check`, `backup` and a migration at start draw one on stderr when it is a terminal (never otherwise)'
complete -c webhookd -n "__fish_webhookd_using_subcommand export" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c webhookd -n "__fish_webhookd_using_subcommand check" -l data-dir -d 'Directory of the embedded database; created if missing' -r -F
complete -c webhookd -n "__fish_webhookd_using_subcommand check" -s q -l quiet -d 'No progress bars: `export`, `check`, `backup` and a migration at start draw one on stderr when it is a terminal (never otherwise)'
complete -c webhookd -n "__fish_webhookd_using_subcommand check" -s h -l help -d 'Print help'
complete -c webhookd -n "__fish_webhookd_using_subcommand backup" -l data-dir -d 'Directory of the embedded database; created if missing' -r -F
complete -c webhookd -n "__fish_webhookd_using_subcommand backup" -s q -l quiet -d 'No progress bars: `export`, `check`, `backup` and a migration at start draw one on stderr when it is a terminal (never otherwise)'
complete -c webhookd -n "__fish_webhookd_using_subcommand backup" -s h -l help -d 'Print help'
complete -c webhookd -n "__fish_webhookd_using_subcommand check-map" -l data-dir -d 'Directory of the embedded database; created if missing' -r -F
complete -c webhookd -n "__fish_webhookd_using_subcommand check-map" -s q -l quiet -d 'No progress bars: `export`, `check`, `backup` and a migration at start draw one on stderr when it is a terminal (never otherwise)'
complete -c webhookd -n "__fish_webhookd_using_subcommand check-map" -s h -l help -d 'Print help'
complete -c webhookd -n "__fish_webhookd_using_subcommand help; and not __fish_seen_subcommand_from inspect export check backup check-map help" -f -a "inspect" -d 'Print one stored transaction as JSON, as `GET /v1/transactions/{id}` shows it'
complete -c webhookd -n "__fish_webhookd_using_subcommand help; and not __fish_seen_subcommand_from inspect export check backup check-map help" -f -a "export" -d 'Write every stored transaction to stdout, one JSON object per line, in arrival order'
complete -c webhookd -n "__fish_webhookd_using_subcommand help; and not __fish_seen_subcommand_from inspect export check backup check-map help" -f -a "check" -d 'Verify every page\'s checksum (without changing the file), that every record decodes and every pending job matches a PROCESSING transaction (and the reverse); exit 1 on damage'
complete -c webhookd -n "__fish_webhookd_using_subcommand help; and not __fish_seen_subcommand_from inspect export check backup check-map help" -f -a "backup" -d 'Write a consistent, fsync\'d copy of the database file to DEST (not while the daemon runs: redb locks the file)'
complete -c webhookd -n "__fish_webhookd_using_subcommand help; and not __fish_seen_subcommand_from inspect export check backup check-map help" -f -a "check-map" -d 'Print the transaction SAMPLE would become under the payload map FILE, or the answer that would refuse it (no data dir or daemon needed); exit 1 if it would be refused, 2 if FILE does not load'
complete -c webhookd -n "__fish_webhookd_using_subcommand help; and not __fish_seen_subcommand_from inspect export check backup check-map help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
