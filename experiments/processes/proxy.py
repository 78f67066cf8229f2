"""A closed control plane: nginx in front of the SuperLink, forwarding the Fleet API only.

Flower 1.42's SuperLink serves its Fleet (``/v1/fleet/``), Control (``/v1/control/``) and
Runtime (``/v1/runtime/``) APIs on one HTTPS port, and open-source Flower's Control API accepts
every caller: whoever reaches the port can submit a run (whose ClientApp then executes on every
SuperNode), register a node key or stop runs. So the SuperLink listens on the operator's
loopback only, and participants reach it through this proxy, which terminates TLS with the same
server certificate, forwards ``/v1/fleet/`` to the SuperLink over TLS (verified against the
CA) and answers everything else with 403.

nginx comes from Debian's packages (``apt-get install nginx-light``); it runs in the
foreground (``daemon off``) as a process owned and stopped by PID like the Flower ones.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

from experiments.processes.certs import DevPki
from experiments.processes.owned import OwnedProcess, dial_address
from experiments.processes.procs import free_port, wait_for_port

FLEET_PREFIX = "/v1/fleet/"
"""The only path prefix participants may reach."""
REFUSAL = "fedpriv: only the Fleet API is reachable from participant networks"


def nginx_binary() -> str:
    """Path of ``nginx``; ``RuntimeError`` says how to install it."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise RuntimeError(
        "the participant proxy needs nginx (Debian: apt-get install nginx-light); not found"
    )


def nginx_config(
    prefix: Path, pki: DevPki, host: str, port: int, upstream: str, upstream_name: str
) -> str:
    """The nginx configuration of the participant proxy (see the module docstring)."""
    temp = prefix / "tmp"
    user = f"user {pwd.getpwuid(os.getuid()).pw_name};" if os.getuid() == 0 else ""
    return f"""# written by experiments/processes/proxy.py: participants reach the Fleet API only
{user}
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 512; }}
http {{
    access_log {prefix / "access.log"};
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    client_max_body_size 2g;
    underscores_in_headers on;
    server {{
        listen {host}:{port} ssl;
        ssl_certificate {pki.server_cert};
        ssl_certificate_key {pki.server_key};
        location {FLEET_PREFIX} {{
            proxy_pass https://{upstream};
            proxy_http_version 1.1;
            proxy_ssl_trusted_certificate {pki.ca_cert};
            proxy_ssl_verify on;
            proxy_ssl_name {upstream_name};
            proxy_ssl_server_name on;
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
        location / {{
            default_type text/plain;
            return 403 "{REFUSAL}\\n";
        }}
    }}
}}
"""


class ParticipantProxy(OwnedProcess):
    """nginx on ``host:port`` forwarding the Fleet API to the SuperLink at ``upstream``.

    Parameters
    ----------
    workdir
        Its configuration, logs, pid file and temporary files.
    pki
        The server certificate it presents (the SuperLink's) and the CA it verifies with.
    upstream
        The SuperLink's ``host:port`` (loopback: the operator's side).
    host, port
        Where participants connect.
    """

    name = "nginx (participant proxy)"

    def __init__(
        self, workdir: Path, pki: DevPki, upstream: str, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__(workdir, None)
        self.pki = pki
        self.upstream = upstream
        self.host = host
        self.port = port or free_port()

    @property
    def address(self) -> str:
        """``host:port`` as participants dial it."""
        return dial_address(self.host, self.port)

    def start(self, timeout: float = 30) -> ParticipantProxy:
        """Write the configuration and start nginx in the foreground; wait until it listens."""
        binary = nginx_binary()
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(
            nginx_config(self.workdir, self.pki, self.host, self.port, self.upstream, "localhost")
        )
        proc = self._spawn(
            [binary, "-p", str(self.workdir), "-c", str(conf), "-g", "daemon off;"], "nginx.log"
        )
        try:
            wait_for_port(self.port, proc, timeout, self.name, self.address.split(":")[0])
        except BaseException:
            self.stop()
            raise
        return self
