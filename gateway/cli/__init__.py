"""The `gateway` command: one module a command group, each command thin over a library function.

Groups name a thing and take a verb, the same verbs everywhere: `add`, `list`, `show`, `disable`
(`gateway est-user add NAME`, `gateway admin-token list`). The protocol clients live under
`gateway client scep|est`. Names used before are kept, hidden, for one release (support.hidden_alias).
"""

from __future__ import annotations

import click

from gateway.cli import (
    admin_token,
    audit,
    backup,
    ca,
    cert,
    challenge,
    client,
    completion,
    config,
    crl,
    db,
    est_user,
    init,
    migrate,
    request,
    serve,
    status,
)
from gateway.cli.client import est, scep
from gateway.cli.support import GatewayGroup, hidden_alias


@click.group("gateway", cls=GatewayGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scep-est-gateway", prog_name="gateway")
def main() -> None:
    """SCEP-to-EST migration gateway: legacy SCEP and EST on one shared CA.

    \b
    set up and run     init, config, db, serve, status, completion
    operations         audit, backup, restore
    the CA             ca, cert, crl
    credentials        challenge (SCEP), est-user (EST), admin-token (admin API)
    approvals          request
    migration          migrate
    protocol clients   client scep, client est
    """


main.add_command(init.init)
main.add_command(config.config)
main.add_command(db.db)
main.add_command(serve.serve)
main.add_command(status.status)
main.add_command(backup.backup)
main.add_command(backup.restore)
main.add_command(audit.audit)
main.add_command(completion.completion)
main.add_command(ca.ca)
main.add_command(cert.cert)
main.add_command(crl.crl)
main.add_command(challenge.challenge)
main.add_command(est_user.est_user)
main.add_command(admin_token.admin_token)
main.add_command(request.request)
main.add_command(migrate.migrate)
main.add_command(client.client)

main.add_command(hidden_alias(request.request, "requests", "gateway request"))
main.add_command(hidden_alias(scep.scep, "scep", "gateway client scep"))
main.add_command(hidden_alias(est.est, "est", "gateway client est"))
