"""NATS users per role (``forgeone auth init``) on a real nats-server with auth on.

One server for the module, configured with the generated ``nats-auth.conf``;
a coordinator and a worker run with their own role's credentials, echo is
deployed with the publisher's, and each test connects as one role and checks
what it may and may not do. A denied publish is dropped by the server, which
tells the client with a permissions violation; the tests wait for that
violation rather than for a timeout alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, NotFoundError

from coordinator.auth import (
    BCRYPT_COST,
    CONFIG_NAME,
    ROLES,
    GatewayScope,
    add_auth_commands,
    bcrypt_hash,
    bcrypt_salt,
    control_buckets,
    creds_name,
    gateway_scope,
    init_auth,
    role_permissions,
)
from coordinator.client import ForgeClient
from coordinator.embedded_nats import MAX_PAYLOAD, NatsServer, free_port
from coordinator.gateway import Gateway, GatewayConfig
from schemas.admin import DeployRequest
from schemas.codec import decode, encode, from_obj
from schemas.credentials import connect_options
from schemas.errors import BadRequest, Denied, PluginNotFound
from schemas.messages import LogEvent
from schemas.package import package_digest
from schemas.signing import TrustStore, generate_key, save_private_key
from schemas.subjects import Subjects
from schemas.triggers import SourceKind, TriggerSpec
from tests.cluster import REPO, Cluster, eventually

SUBJECTS = Subjects()
#: How long a test waits for the answer to a publish the server is expected to drop.
DENIED_WAIT_S = 1.0


@dataclass
class AuthCluster(Cluster):
    """A Cluster whose nats-server requires the users ``auth init`` wrote to ``auth_dir``."""

    auth_dir: Path = field(default_factory=Path)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.key = generate_key()
        self.key_path = self.root / "signing.key"
        save_private_key(self.key, self.key_path)
        self.trust_path = self.root / "trust.json"
        TrustStore().with_key(self.key.public_key(), "test").save(self.trust_path)
        config = self.auth_dir / "server.conf"  # include paths are relative to this file
        server = NatsServer(store_dir=self.root / "nats", config_file=config)
        # server_name as on its command line, so that the configuration can be reloaded
        config.write_text(
            f'server_name: {server.name}\nmax_payload: {MAX_PAYLOAD}\ninclude "{CONFIG_NAME}"\n'
        )
        self.servers = [server.start()]

    def creds(self, role: str) -> str:
        return str(self.auth_dir / creds_name(role))

    async def client_as(self, role: str) -> ForgeClient:
        return await ForgeClient.connect(self.url, credentials=self.creds(role))


@dataclass
class Conn:
    """A raw NATS connection as one role, keeping the errors the server sends it."""

    nc: Client
    errors: list[str]

    async def violation(self, subject: str) -> None:
        """Wait for the server's permissions violation for publishing to ``subject`` (or
        a subject starting with it)."""
        wanted = f'permissions violation for publish to "{subject}'.lower()

        async def seen() -> bool:
            return any(wanted in e.lower() for e in self.errors)

        await eventually(seen, 5, f"a permissions violation for {subject}")

    async def subscription_violation(self, subject: str) -> None:
        """Wait for the server's permissions violation for subscribing to ``subject``."""
        wanted = f'permissions violation for subscription to "{subject}"'.lower()

        async def seen() -> bool:
            return any(wanted in e.lower() for e in self.errors)

        await eventually(seen, 5, f"a subscription violation for {subject}")


async def connect_as(cluster: AuthCluster, role: str) -> Conn:
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    nc = await nats.connect(
        cluster.url,
        error_cb=on_error,
        allow_reconnect=False,
        **connect_options(cluster.creds(role)),
    )
    return Conn(nc, errors)


#: Trigger sources the module's users are made for (``--trigger-subject/-stream``).
TRIGGER_SUBJECTS, TRIGGER_STREAM = "orders.sub.>", "ORDERS"
#: Another service on the bus, outside ForgeOne's roles: it publishes the events that
#: triggers consume and reads their outputs (plain password: a test-only user).
APP_USER = (
    '    {user: "app", password: "app-secret", permissions: '
    '{publish: ["orders.>"], subscribe: ["events.>", "hooks.>", "_INBOX.>"]}}\n'
)


#: The gateway's routes: its NATS user is made from them (``--gateway-config``).
GATEWAY_ROUTES: dict[str, object] = {
    "invoke": [{"plugin": "echo", "functions": ["upper"]}, {"plugin": "ghost"}],
    "hooks": [
        {"name": "orders", "subject": "hooks.orders"},
        {"name": "stored", "subject": "hooks.stored", "jetstream": True},
    ],
}


#: A second worker user, with the worker role's permissions, for revoking one user.
WORKER_2 = ("forge-worker-2", "worker-2-secret")


def user_block(config: str, user: str) -> str:
    """One user's entry in a config ``auth init`` wrote."""
    start = config.index(f'    {{\n      user: "{user}"\n')
    return config[start : config.index("\n    }\n", start) + len("\n    }\n")]


@pytest.fixture(scope="module")
def auth_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthCluster]:
    root = tmp_path_factory.mktemp("auth")
    auth_dir = root / "auth"
    gateway_config = root / "gateway.json"
    gateway_config.write_text(json.dumps(GATEWAY_ROUTES))
    init_auth(
        auth_dir,
        cost=4,  # the tests of bcrypt and of `forgeone dev --auth` use the default
        trigger_subjects=[TRIGGER_SUBJECTS],
        trigger_streams=[TRIGGER_STREAM],
        gateway_config=gateway_config,
    )
    config = (auth_dir / CONFIG_NAME).read_text()
    worker = user_block(config, "forge-worker")
    worker_2 = re.sub(r'user: "[^"]*"', f'user: "{WORKER_2[0]}"', worker)
    worker_2 = re.sub(r'password: "[^"]*"', f'password: "{WORKER_2[1]}"', worker_2)
    extra = worker_2 + APP_USER
    (auth_dir / CONFIG_NAME).write_text(config.replace("  ]\n}\n", extra + "  ]\n}\n"))
    (auth_dir / creds_name("worker-2")).write_text(
        json.dumps({"user": WORKER_2[0], "password": WORKER_2[1]})
    )
    cluster = AuthCluster(root / "cluster", auth_dir=auth_dir)
    try:
        cluster.start_coordinator("--creds", cluster.creds("coordinator"))
        cluster.start_worker("w1", extra=["--creds", cluster.creds("worker")])

        async def deploy() -> None:
            publisher = await cluster.client_as("publisher")
            try:
                await publisher.deploy(cluster.example_package("echo"))
                await cluster.wait_ready(publisher, "echo", 1)
            finally:
                await publisher.close()

        asyncio.run(deploy())
        yield cluster
    except BaseException:
        print(cluster.dump_logs())
        raise
    finally:
        cluster.close()


# --- offline: the files, the permissions, bcrypt, credentials files --------------------
def test_auth_init_writes_config_and_private_credentials(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="forgeone")
    add_auth_commands(parser.add_subparsers(dest="command", required=True), lambda sp: sp)
    out = tmp_path / "auth"
    assert parser.parse_args(["auth", "init", "--out", "x"]).bcrypt_cost == BCRYPT_COST
    args = ["--emit", "metrics.>", "--trigger-subject", "orders.*", "--trigger-stream", "ORDERS"]
    args += ["--gateway-invoke", "echo/upper", "--gateway-hook", "hooks.x"]
    a = parser.parse_args(["auth", "init", "--out", str(out), "--bcrypt-cost", "4", *args])
    assert a.func(a) == 0

    config = (out / CONFIG_NAME).read_text()
    passwords = {}
    for role in ROLES:
        path = out / creds_name(role)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        creds = json.loads(path.read_text())
        assert set(creds) == {"user", "password"} and creds["user"] == f"forge-{role}"
        assert len(creds["password"]) == 32  # secrets.token_urlsafe(24)
        assert creds["password"] not in config  # only its bcrypt hash is
        assert f'user: "forge-{role}"' in config
        passwords[role] = creds["password"]
    assert len(set(passwords.values())) == len(ROLES)
    assert config.count('password: "$2b$04$') == len(ROLES)
    assert '"metrics.>"' in config and '"events.>"' not in config  # --emit replaces the default
    assert config.count("allow_responses: true") == 2  # coordinator and worker answer requests
    assert '"orders.* *"' in config  # subject triggers listen only in queue groups
    assert '"$JS.API.CONSUMER.MSG.NEXT.ORDERS.*"' in config
    gateway = user_block(config, "forge-gateway")
    assert '"forge.invoke.echo.upper", ' in gateway and '"hooks.x"]' in gateway
    assert "forge.invoke.*" not in gateway and "allow_responses" not in gateway

    # existing files are kept unless --force
    a = parser.parse_args(["auth", "init", "--out", str(out)])
    assert a.func(a) == 1
    assert json.loads((out / creds_name("worker")).read_text())["password"] == passwords["worker"]
    a = parser.parse_args(["auth", "init", "--out", str(out), "--force", "--bcrypt-cost", "4"])
    assert a.func(a) == 0
    assert json.loads((out / creds_name("worker")).read_text())["password"] != passwords["worker"]

    for bad in ("$JS.API.>", "forge.admin.>", ">", "_INBOX.x", "a..b", "a.>.b"):
        with pytest.raises(ValueError, match="--emit"):
            init_auth(tmp_path / "bad", emit=[bad])
        with pytest.raises(ValueError, match="--trigger-subject"):
            init_auth(tmp_path / "bad", trigger_subjects=[bad])
        with pytest.raises(ValueError, match="--gateway-hook"):
            init_auth(tmp_path / "bad", gateway_hooks=[bad])
    with pytest.raises(ValueError, match="--gateway-invoke"):
        init_auth(tmp_path / "bad", gateway_invoke=["Echo/upper"])
    with pytest.raises(ValueError, match="--gateway-config"):
        init_auth(tmp_path / "bad", gateway_config=tmp_path / "missing.json")
    for stream in ("FORGE_JOBS", "KV_forge_deployments", "a.b", "*"):
        with pytest.raises(ValueError, match="--trigger-stream"):
            init_auth(tmp_path / "bad", trigger_streams=[stream])
    assert not (tmp_path / "bad").exists()


def test_role_permissions_follow_the_prefix_and_keep_the_control_plane_to_the_coordinator() -> None:
    perms = role_permissions(Subjects("acme"), ["audit.>"])
    assert set(perms) == set(ROLES)
    every = [s for p in perms.values() for s in (*p.publish_allow, *p.publish_deny)]
    assert not [s for s in every if "forge" in s]  # all built from the prefix given
    assert {"acme_deployments", "acme_packages", "acme_policy"} <= set(
        control_buckets(Subjects("acme"))
    )
    for role in ("worker", "client", "publisher"):
        p = perms[role]
        assert {"$KV.acme_deployments.>", "$KV.acme_policy.>"} <= set(p.publish_deny), role
        assert "$JS.API.STREAM.DELETE.>" in p.publish_deny, role
    for role in ("worker", "client"):
        assert "acme.admin.>" in perms[role].publish_deny
        assert "$O.>" in perms[role].publish_deny
    assert "acme.admin.>" in perms["publisher"].publish_allow
    assert "$O.acme_packages.>" in perms["publisher"].publish_allow
    assert "audit.>" in perms["worker"].publish_allow
    assert perms["worker"].subscribe_allow == ("acme.invoke.> forge-workers", "_INBOX.>")
    assert "acme.>" in perms["coordinator"].publish_allow
    gateway = perms["gateway"]  # no routes given: any plugin, as a client, and no hook
    assert "acme.invoke.*.*" in gateway.publish_allow
    assert {"acme.admin.>", "acme.jobs.>", "$KV.acme_deployments.>", "$O.>"} <= set(
        gateway.publish_deny
    )
    assert gateway.subscribe_allow == ("_INBOX.>",) and not gateway.allow_responses


def test_gateway_user_follows_its_routes(tmp_path: Path) -> None:
    s = Subjects("acme")
    assert gateway_scope(s) == GatewayScope((("*", "*"),), ())
    assert gateway_scope(s, ["echo/upper", "echo", "*/run", "echo"]).invoke == (
        ("echo", "upper"),
        ("echo", "*"),
        ("*", "run"),
    )
    assert gateway_scope(s, ["echo", "*"]).invoke == (("*", "*"),)

    routes = tmp_path / "gateway.json"
    routes.write_text(json.dumps(GATEWAY_ROUTES))
    scope = gateway_scope(s, config=routes)
    assert scope == GatewayScope(
        (("echo", "upper"), ("ghost", "*")), ("hooks.orders", "hooks.stored")
    )
    perms = role_permissions(s, gateway=scope)["gateway"]
    assert perms.publish_allow == (
        "acme.invoke.echo.upper",
        "acme.invoke.ghost.*",
        "$JS.API.STREAM.INFO.KV_acme_deployments",
        "$JS.API.STREAM.MSG.GET.KV_acme_deployments",
        "$JS.API.DIRECT.GET.KV_acme_deployments",
        "$JS.API.DIRECT.GET.KV_acme_deployments.>",
        "hooks.orders",
        "hooks.stored",
    )
    hooks_only = tmp_path / "hooks.json"  # a gateway without invoke routes invokes nothing
    hooks_only.write_text(json.dumps({"hooks": GATEWAY_ROUTES["hooks"]}))
    scope = gateway_scope(s, ["echo/upper"], config=hooks_only)
    assert scope.invoke == (("echo", "upper"),)
    assert role_permissions(s, gateway=gateway_scope(s, config=hooks_only))[
        "gateway"
    ].publish_allow == ("hooks.orders", "hooks.stored")

    for bad in ("Echo", "echo/", "echo/up-per", "echo/a/b", "echo.upper", ""):
        with pytest.raises(ValueError, match="--gateway-invoke"):
            gateway_scope(s, [bad])
    inside = tmp_path / "inside.json"
    inside.write_text(json.dumps({"hooks": [{"name": "evil", "subject": "acme.admin.deploy"}]}))
    with pytest.raises(ValueError, match="--gateway-config hook 'evil'"):
        gateway_scope(s, config=inside)
    broken = tmp_path / "broken.json"
    broken.write_text('{"invoke": [{"plugin": "Not A Name"}]}')
    with pytest.raises(ValueError, match="--gateway-config"):
        gateway_scope(s, config=broken)


@pytest.mark.parametrize(
    ("password", "expected"),
    [  # published bcrypt test vectors (OpenBSD, jBCrypt)
        ("U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"),
        ("", "$2a$06$DCq7YPn5Rq63x1Lad4cll.TV4S6ytwfsfvkgY8jIucDrjc8deX1s."),
        (
            "~!@#$%^&*()      ~!@#$%^&*()PNBFRD",
            "$2a$06$fPIsBO8qRqkjj273rfaOI.HtSV9jLDpTbZn782DC6/t7qT67P6FfO",
        ),
    ],
)
def test_bcrypt_matches_published_vectors(password: str, expected: str) -> None:
    cost, salt = int(expected[4:6]), bcrypt_salt(expected[7:29])
    assert bcrypt_hash(password, cost, salt) == "$2b$" + expected[4:]


def test_credentials_files_become_connect_options(tmp_path: Path) -> None:
    assert connect_options(None) == {}
    good = tmp_path / "client.creds.json"
    good.write_text('{"user": "forge-client", "password": "s3cret"}')
    assert connect_options(str(good)) == {"user": "forge-client", "password": "s3cret"}
    jwt = tmp_path / "user.creds"
    jwt.write_text(
        "-----BEGIN NATS USER JWT-----\neyJ0eXAi\n------END NATS USER JWT------\n\n"
        "-----BEGIN USER NKEY SEED-----\nSUAM\n------END USER NKEY SEED------\n"
    )
    assert connect_options(str(jwt)) == {"user_credentials": str(jwt)}
    for name, text in [
        ("missing.json", None),
        ("broken.json", "{not json"),
        ("list.json", '["forge-client"]'),
        ("nopass.json", '{"user": "forge-client"}'),
        ("empty.creds", ""),
    ]:
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(name)):
            connect_options(str(path))


# --- on a server with auth on ------------------------------------------------------------
async def test_connections_without_valid_credentials_are_refused_at_once(
    auth_cluster: AuthCluster, tmp_path: Path
) -> None:
    started = time.monotonic()
    with pytest.raises(Denied, match="refused the credentials"):
        await ForgeClient.connect(auth_cluster.url)  # persistent: would otherwise retry forever
    wrong = tmp_path / "wrong.creds.json"
    wrong.write_text('{"user": "forge-client", "password": "not-the-password"}')
    with pytest.raises(Denied, match=re.escape(f"refused the credentials in {wrong}")):
        await ForgeClient.connect(auth_cluster.url, credentials=str(wrong))
    with pytest.raises(BadRequest, match=r"missing\.json"):
        await ForgeClient.connect(auth_cluster.url, credentials=str(tmp_path / "missing.json"))
    assert time.monotonic() - started < 5


def test_processes_without_valid_credentials_exit_with_a_clear_message(
    auth_cluster: AuthCluster, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.creds.json"
    wrong.write_text('{"user": "forge-worker", "password": "not-the-password"}')
    env = {**os.environ, "FORGE_NATS_URL": auth_cluster.url}
    env.pop("FORGE_NATS_CREDS", None)
    cli = subprocess.run(
        [sys.executable, "-m", "coordinator", "list"], capture_output=True, env=env, timeout=60
    )
    assert cli.returncode == 1
    assert b"DENIED: NATS at" in cli.stderr and b"refused the credentials" in cli.stderr
    worker = subprocess.run(
        [sys.executable, "-m", "worker", "--creds", str(wrong)],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert worker.returncode != 0
    assert f"refused the credentials in {wrong}".encode() in worker.stderr


async def test_worker_credentials_cannot_deploy(auth_cluster: AuthCluster) -> None:
    hello = auth_cluster.example_package("hello")
    publisher = await auth_cluster.client_as("publisher")
    worker = await connect_as(auth_cluster, "worker")
    try:
        digest = await publisher.upload(hello)  # so that only the admin request is missing
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await worker.nc.request(
                SUBJECTS.admin("deploy"),
                encode(DeployRequest(digest, {})),
                timeout=DENIED_WAIT_S,
            )
        await worker.violation(SUBJECTS.admin("deploy"))
        packages = await worker.nc.jetstream(timeout=DENIED_WAIT_S).object_store(
            SUBJECTS.packages_bucket
        )
        with pytest.raises(nats.errors.TimeoutError):  # nor upload (ObjectStore.put) a package
            await packages.put(package_digest(hello), hello)
        await worker.violation(f"$O.{SUBJECTS.packages_bucket}.C.")  # its first chunk
        assert "hello" not in {p.record.plugin for p in await publisher.plugins()}
    finally:
        await worker.nc.close()
        await publisher.close()


@pytest.mark.parametrize("role", ["worker", "client", "publisher"])
@pytest.mark.parametrize(
    ("bucket", "key"), [(SUBJECTS.deployments_bucket, "echo"), (SUBJECTS.policy_bucket, "default")]
)
async def test_only_the_coordinator_writes_the_control_buckets(
    auth_cluster: AuthCluster, role: str, bucket: str, key: str
) -> None:
    coordinator = await connect_as(auth_cluster, "coordinator")
    other = await connect_as(auth_cluster, role)
    try:
        kv = await coordinator.nc.jetstream().key_value(bucket)  # the coordinator made both

        async def revision() -> int:
            try:
                return int((await kv.get(key)).revision or 0)
            except (KeyNotFoundError, NotFoundError):
                return 0

        before = await revision()
        # a KV put is a JetStream publish to $KV.<bucket>.<key>
        subject = f"$KV.{bucket}.{key}"
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await other.nc.jetstream(timeout=DENIED_WAIT_S).publish(subject, b"forged")
        await other.violation(subject)
        assert await revision() == before
    finally:
        await other.nc.close()
        await coordinator.nc.close()


async def test_worker_reads_and_writes_plugin_kv_buckets_and_the_client_does_not(
    auth_cluster: AuthCluster,
) -> None:
    bucket = SUBJECTS.kv_bucket("authtest")
    coordinator = await connect_as(auth_cluster, "coordinator")
    worker = await connect_as(auth_cluster, "worker")
    client = await connect_as(auth_cluster, "client")
    try:
        await coordinator.nc.jetstream().create_key_value(bucket=bucket)
        kv = await worker.nc.jetstream().key_value(bucket)
        await kv.put("counter", b"1")
        assert (await kv.get("counter")).value == b"1"
        with pytest.raises(nats.errors.TimeoutError):
            await client.nc.jetstream(timeout=DENIED_WAIT_S).publish(f"$KV.{bucket}.counter", b"2")
        await client.violation(f"$KV.{bucket}.counter")
        assert (await kv.get("counter")).value == b"1"
    finally:
        for conn in (client, worker, coordinator):
            await conn.nc.close()


async def test_client_credentials_invoke_and_run_jobs_but_not_administer(
    auth_cluster: AuthCluster,
) -> None:
    client = await auth_cluster.client_as("client")
    raw = await connect_as(auth_cluster, "client")
    try:
        assert await client.invoke("echo", "upper", b"hello", timeout=5) == b"HELLO"
        with pytest.raises(PluginNotFound):  # reads the deployments bucket to tell
            await client.invoke("nosuch", "fn", b"")
        job_id = await client.submit("echo", "upper", b"durable")
        assert await client.result(job_id, timeout=20) == b"DURABLE"
        more = [await client.submit("echo", "upper", str(i).encode()) for i in range(3)]
        outputs = {r.job_id: r.result.output async for r in client.results(more, timeout=20)}
        assert outputs == {j: str(i).encode() for i, j in enumerate(more)}
        assert "echo" in {s.plugin for s in await client.job_stats()}

        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await raw.nc.request(SUBJECTS.admin("list"), b"", timeout=DENIED_WAIT_S)
        await raw.violation(SUBJECTS.admin("list"))
    finally:
        await raw.nc.close()
        await client.close()


async def test_a_worker_whose_user_is_revoked_stops(auth_cluster: AuthCluster) -> None:
    worker = auth_cluster.start_worker("w2", extra=["--creds", auth_cluster.creds("worker-2")])
    publisher = await auth_cluster.client_as("publisher")
    try:
        await auth_cluster.wait_ready(publisher, "echo", 2)  # w2 is serving
    finally:
        await publisher.close()
    config = auth_cluster.auth_dir / CONFIG_NAME
    text = config.read_text()
    config.write_text(text.replace(user_block(text, WORKER_2[0]), ""))
    assert auth_cluster.nats.proc is not None
    auth_cluster.nats.proc.send_signal(signal.SIGHUP)  # the server reloads its users
    await asyncio.to_thread(worker.popen.wait, 20)  # rather than idling on a closed connection
    assert "event=nats_auth_refused" in worker.log_text()
    assert "credentials refused; stopping" in worker.log_text()
    client = await auth_cluster.client_as("client")  # the other users carry on
    try:
        assert await client.invoke("echo", "upper", b"still here") == b"STILL HERE"
    finally:
        await client.close()


#: Host calls a plugin makes through its worker's connection: tests/hostile.wat's.
HOST_CALLS = ["kv_roundtrip", "call_echo", "emit_ok", "wasi_print"]
HOST_GRANTS = ["log", "publish:events.>", "kv:state", "call:echo", "config", "clock", "random"]


async def test_plugin_host_calls_stay_within_the_worker_role(auth_cluster: AuthCluster) -> None:
    server_log = auth_cluster.nats.store_dir / "nats-server.log"
    seen_before = server_log.stat().st_size
    publisher = await auth_cluster.client_as("publisher")
    client = await auth_cluster.client_as("client")
    try:
        await publisher.grant("plugin.hostile", *HOST_GRANTS)
        wat = (REPO / "tests" / "hostile.wat").read_text()
        package = auth_cluster.wat_package(
            "hostile", wat, exports=HOST_CALLS, permissions=HOST_GRANTS
        )
        await publisher.deploy(package)
        await auth_cluster.wait_ready(publisher, "hostile", 1)
        assert await client.invoke("hostile", "kv_roundtrip", b"state!") == b"state!"
        assert await client.invoke("hostile", "call_echo", b"nested") == b"NESTED"
        assert await client.invoke("hostile", "emit_ok", b"event") == b""
        assert await client.invoke("hostile", "wasi_print") == b""  # a log syscall

        # the publisher reads the plugin's logs (as coordinator/logs.py does: an ordered
        # consumer on the logs stream)
        logs = await publisher.nc.jetstream().subscribe(
            SUBJECTS.syscall_logs("hostile"), stream=SUBJECTS.logs_stream, ordered_consumer=True
        )
        try:
            deadline = time.monotonic() + 10
            lines: list[str] = []
            while "printed to stdout" not in lines:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no WASI stdout line in the plugin's logs: {lines}"
                msg = await logs.next_msg(timeout=remaining)
                lines.append(decode(LogEvent, msg.data).message)
        finally:
            await logs.unsubscribe()
        # The emit went out on the worker's connection before the replies that followed
        # it, so the server has judged it by now.
        with server_log.open() as f:
            f.seek(seen_before)
            assert "Violation" not in f.read()
    finally:
        await client.close()
        await publisher.close()


async def test_triggers_run_within_the_worker_role(auth_cluster: AuthCluster) -> None:
    server_log = auth_cluster.nats.store_dir / "nats-server.log"
    seen_before = server_log.stat().st_size
    coordinator = await connect_as(auth_cluster, "coordinator")
    publisher = await auth_cluster.client_as("publisher")
    app = await nats.connect(auth_cluster.url, user="app", password="app-secret")
    try:
        # the user's stream (made here by the operator: the app may not use JetStream)
        await coordinator.nc.jetstream().add_stream(
            name=TRIGGER_STREAM, subjects=["orders.stream.>"]
        )
        await publisher.add_trigger(
            TriggerSpec(
                name="on-sub",
                source=SourceKind.SUBJECT,
                plugin="echo",
                fn="upper",
                subject="orders.sub.*",
                output="events.sub.{3}",
            )
        )
        await publisher.add_trigger(
            TriggerSpec(
                name="on-stream",
                source=SourceKind.STREAM,
                plugin="echo",
                fn="upper",
                stream=TRIGGER_STREAM,
                start="all",
                output="events.stream.{3}",
            )
        )
        outputs: asyncio.Queue[Msg] = asyncio.Queue()
        await app.subscribe("events.>", cb=outputs.put)
        await app.publish("orders.stream.a", b"stored")  # the stream keeps it for the trigger

        async def answered() -> bytes | None:  # once a worker has bound the subject trigger
            try:
                return (await app.request("orders.sub.b", b"asked", timeout=0.5)).data
            except nats.errors.Error:
                return None

        assert await eventually(answered, 15, "the subject trigger's reply") == b"ASKED"
        await app.publish("orders.sub.c", b"told")
        got: dict[str, bytes] = {}
        deadline = time.monotonic() + 15
        while not {"events.stream.a", "events.sub.c"} <= set(got):
            try:
                msg = await asyncio.wait_for(outputs.get(), max(0, deadline - time.monotonic()))
            except TimeoutError:
                raise AssertionError(f"trigger outputs after 15s: {got}") from None
            got[msg.subject] = msg.data
        assert got["events.stream.a"] == b"STORED" and got["events.sub.c"] == b"TOLD"
        with server_log.open() as f:
            f.seek(seen_before)
            assert "Violation" not in f.read()
    finally:
        await app.close()
        await publisher.close()
        await coordinator.nc.close()


async def test_gateway_credentials_serve_its_routes_and_nothing_else(
    auth_cluster: AuthCluster,
) -> None:
    server_log = auth_cluster.nats.store_dir / "nats-server.log"
    seen_before = server_log.stat().st_size
    coordinator = await connect_as(auth_cluster, "coordinator")
    app = await nats.connect(auth_cluster.url, user="app", password="app-secret")
    client = await auth_cluster.client_as("gateway")
    runner, port = await Gateway(client, from_obj(GatewayConfig, GATEWAY_ROUTES)).start(
        "127.0.0.1", 0
    )
    url = f"http://127.0.0.1:{port}"
    raw = await connect_as(auth_cluster, "gateway")
    try:
        # the operator's stream behind the JetStream hook
        await coordinator.nc.jetstream().add_stream(name="HOOKS", subjects=["hooks.stored"])
        hooked: asyncio.Queue[Msg] = asyncio.Queue()
        await app.subscribe("hooks.orders", cb=hooked.put)
        await app.flush()
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/invoke/echo/upper", data=b"via http") as r:
                assert r.status == 200 and await r.read() == b"VIA HTTP"
            async with http.post(f"{url}/invoke/ghost/run", data=b"") as r:
                # nobody answers: the deployments bucket tells "not deployed"
                assert r.status == 404
                assert (await r.json())["error"]["code"] == "PLUGIN_NOT_FOUND"
            async with http.post(f"{url}/hooks/orders", data=b'{"id": 7}') as r:
                assert r.status == 202
            msg = await asyncio.wait_for(hooked.get(), 10)
            assert msg.data == b'{"id": 7}' and (msg.headers or {})["Forge-Hook"] == "orders"
            key = {"Idempotency-Key": "order-7"}
            async with http.post(f"{url}/hooks/stored", data=b"kept", headers=key) as r:
                stored = await r.json()
                assert r.status == 202 and stored["stream"] == "HOOKS" and stored["seq"] == 1
        with server_log.open() as f:
            f.seek(seen_before)
            assert "Violation" not in f.read()  # all of it within the gateway role

        # and nothing beyond its routes: other functions and plugins, admin requests,
        # jobs, the control-plane buckets, subjects no hook names
        for subject in (
            SUBJECTS.invoke("echo", "echo"),
            SUBJECTS.invoke("hello", "greet"),
            SUBJECTS.admin("list"),
        ):
            with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                await raw.nc.request(subject, b"", timeout=DENIED_WAIT_S)
            await raw.violation(subject)
        for subject in (
            SUBJECTS.jobs("echo", "upper"),
            f"$KV.{SUBJECTS.deployments_bucket}.echo",
            "hooks.other",
        ):
            await raw.nc.publish(subject, b"x")
            await raw.violation(subject)
        # nor listen to what others send: invocations, or a hook's events
        for pattern in (f"{SUBJECTS.prefix}.invoke.>", "hooks.orders"):
            await raw.nc.subscribe(pattern)
            await raw.subscription_violation(pattern)
    finally:
        await raw.nc.close()
        await runner.cleanup()
        await client.close()
        await app.close()
        await coordinator.nc.close()


def test_dev_auth_runs_every_process_as_its_role(tmp_path: Path, plugins: dict[str, Path]) -> None:
    code = (
        "import argparse, sys\n"
        "from coordinator.dev import run_dev\n"
        "sys.exit(run_dev(argparse.Namespace(dir=sys.argv[1], workers=1, port=int(sys.argv[2]),"
        " plugins=sys.argv[3], once=True, auth=True)))\n"
    )
    dev = tmp_path / "dev"
    (dev / "packages").mkdir(parents=True)
    for wasm in plugins.values():  # built already: plugins/build.py finds them up to date
        shutil.copy2(wasm, dev / "packages" / wasm.name)
    r = subprocess.run(
        [sys.executable, "-c", code, str(dev), str(free_port()), str(REPO / "plugins")],
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
    )
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "created NATS users for coordinator, worker, client, publisher, gateway" in out
    assert "echo.upper(b'hello, forgeone') -> HELLO, FORGEONE" in out
    assert "hello.greet(b'operator') -> Hello, operator!" in out
    for role in ROLES:
        assert stat.S_IMODE((dev / "auth" / creds_name(role)).stat().st_mode) == 0o600
    server_log = (dev / "nats-server.log").read_text()
    assert "Violation" not in server_log  # every process stayed within its role
