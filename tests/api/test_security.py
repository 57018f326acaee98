"""Transport security and callers over the real server: TLS, mTLS, tokens, roles, PII, rotation.

Certificates are made at test time with trustme; every call goes over a real TLS channel.
"""

from __future__ import annotations

import pathlib
import shutil

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nba_service.api.auth import AuthFile, AuthFileError, new_token
from nba_service.app.server import check_exposure
from nba_service.cli import main
from nba_service.policies.parser import read_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc
from nba_service.settings import Settings, SettingsError
from nba_service.store.policy_store import PolicyStore
from tests.conftest import SAMPLE_POLICIES, atm_decline, daytime_zone, profile, wait_until

ATM_CN = "atm-backend.bank.internal"


class Pki:
    """A CA, the server's certificate for 127.0.0.1, and files for both."""

    def __init__(self, folder: pathlib.Path, ca: trustme.CA | None = None) -> None:
        self.folder = folder
        self.ca = ca or trustme.CA()
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_file = folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert_file, self.key_file = folder / "server.pem", folder / "server.key"
        self.issue_server_cert()

    def issue_server_cert(self) -> None:
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(str(self.key_file))
        with open(self.cert_file, "wb") as f:
            for blob in cert.cert_chain_pems:
                f.write(blob.bytes())

    def credentials(self, client_cert: trustme.LeafCert | None = None) -> grpc.ChannelCredentials:
        if client_cert is None:
            return grpc.ssl_channel_credentials(root_certificates=self.ca.cert_pem.bytes())
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.cert_pem.bytes(),
            private_key=client_cert.private_key_pem.bytes(),
            certificate_chain=b"".join(blob.bytes() for blob in client_cert.cert_chain_pems),
        )


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    return Pki(tmp_path / "pki")


@pytest.fixture
def tokens(tmp_path: pathlib.Path) -> dict[str, str]:
    """An auth file with one caller per role set; returns name -> token (the file holds digests only)."""
    roles = {"atm": ["decide"], "desk": ["agent"], "desk-pii": ["agent", "pii"], "crm": ["crm"]}
    made = {name: new_token() for name in roles}
    lines = ["clients:"]
    for name, (_, digest) in made.items():
        lines += [f"  - name: {name}", f'    token_sha256: "{digest}"', f"    roles: [{', '.join(roles[name])}]"]
    lines += [f"  - name: atm-by-cert\n    cert_cn: {ATM_CN}\n    roles: [decide]"]
    (tmp_path / "auth.yaml").write_text("\n".join(lines) + "\n")
    return {name: token for name, (token, _) in made.items()}


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def channel(port: int, credentials: grpc.ChannelCredentials) -> grpc.Channel:
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def code_of(call, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failure:
        call(*args, **kwargs)
    return failure.value.code()


@pytest.fixture
def secure_server(start_server, published, pki, tokens, tmp_path):
    return start_server(
        tls_cert=str(pki.cert_file), tls_key=str(pki.key_file), auth_file=str(tmp_path / "auth.yaml"), metrics_port=0
    )


def test_tls_with_tokens_and_roles(secure_server, pki, tokens):
    port = secure_server.port
    # a plaintext client cannot talk to the TLS port
    plain = pb_grpc.DecisionServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    assert code_of(plain.Decide, atm_decline("c1"), timeout=5) is grpc.StatusCode.UNAVAILABLE

    with channel(port, pki.credentials()) as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        # health needs no credentials (Kubernetes probes)
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="nba.v1.DecisionService"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        # TLS but no token, or a wrong one
        assert code_of(stub.Decide, atm_decline("c1"), timeout=5) is grpc.StatusCode.UNAUTHENTICATED
        assert code_of(stub.Decide, atm_decline("c1"), metadata=bearer("not-a-token"), timeout=5) is (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert code_of(stub.Decide, atm_decline("c1"), metadata=(("authorization", "Basic abc"),), timeout=5) is (
            grpc.StatusCode.UNAUTHENTICATED
        )

        # the CRM writes profiles; the ATM backend may decide but not read or write customers
        zone = daytime_zone()
        customer = profile("c1", timezone=zone, income="52000", birthday="1990-04-02")
        stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=customer), metadata=bearer(tokens["crm"]), timeout=5)
        decision = stub.Decide(atm_decline("c1"), metadata=bearer(tokens["atm"]), timeout=5)
        assert not decision.no_action
        stub.ReportOutcome(
            pb.OutcomeRequest(decision_id=decision.decision_id, outcome=pb.OUTCOME_KIND_ACCEPTED),
            metadata=bearer(tokens["atm"]),
            timeout=5,
        )
        context_request = pb.CustomerContextRequest(customer_id="c1")
        assert code_of(stub.GetCustomerContext, context_request, metadata=bearer(tokens["atm"]), timeout=5) is (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert code_of(
            stub.UpsertCustomer, pb.UpsertCustomerRequest(profile=customer), metadata=bearer(tokens["atm"]), timeout=5
        ) is grpc.StatusCode.PERMISSION_DENIED
        # the same answer for a customer that does not exist: the denial says nothing about customers
        assert code_of(
            stub.GetCustomerContext, pb.CustomerContextRequest(customer_id="nobody"), metadata=bearer(tokens["atm"]),
            timeout=5,
        ) is grpc.StatusCode.PERMISSION_DENIED

        # an agent sees the journey but not the sensitive attributes; with pii it sees them
        view = stub.GetCustomerContext(context_request, metadata=bearer(tokens["desk"]), timeout=5)
        assert [e.type for e in view.journey] == ["atm_decline"]
        assert "credit_score" not in view.profile.attributes and "income" not in view.profile.attributes
        assert "birthday" not in view.profile.attributes
        full = stub.GetCustomerContext(context_request, metadata=bearer(tokens["desk-pii"]), timeout=5)
        assert full.profile.attributes["credit_score"] == "720" and full.profile.attributes["income"] == "52000"
        # an agent may decide on an agent contact, not on an ATM decline
        contact = pb.DecideRequest(
            customer_id="c1",
            origin_channel="agent_desktop",
            event=pb.Event(agent_contact=pb.AgentContact(agent_id="a7", reason="card")),
        )
        stub.Decide(contact, metadata=bearer(tokens["desk"]), timeout=5)
        assert code_of(stub.Decide, atm_decline("c1"), metadata=bearer(tokens["desk"]), timeout=5) is (
            grpc.StatusCode.PERMISSION_DENIED
        )

    scraped = _metrics(secure_server)
    assert 'nba_auth_denied_total{caller="unknown",reason="no_credentials"} 1.0' in scraped
    assert 'nba_auth_denied_total{caller="unknown",reason="unknown_token"} 1.0' in scraped
    assert 'nba_auth_denied_total{caller="atm",reason="missing_role"} 3.0' in scraped
    assert tokens["atm"] not in scraped


def test_record_event_needs_the_decide_role(secure_server, pki, tokens):
    request = pb.RecordEventRequest(customer_id="e1", origin_channel="store", event=pb.Event(
        custom=pb.CustomEvent(name="purchase", attributes={"cart_id": "k1"})))
    with channel(secure_server.port, pki.credentials()) as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        assert code_of(stub.RecordEvent, request, timeout=5) is grpc.StatusCode.UNAUTHENTICATED
        for caller in ("desk", "crm"):
            assert code_of(stub.RecordEvent, request, metadata=bearer(tokens[caller]), timeout=5) is (
                grpc.StatusCode.PERMISSION_DENIED
            )
        assert stub.RecordEvent(request, metadata=bearer(tokens["atm"]), timeout=5).timestamp_ms > 0
        view = stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="e1"), metadata=bearer(tokens["desk"]),
                                       timeout=5)
        assert [e.type for e in view.journey] == ["custom"]  # recorded once, by the caller with the role


def _metrics(server) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_mtls_requires_a_known_client_certificate(start_server, published, pki, tokens, tmp_path):
    server = start_server(
        tls_cert=str(pki.cert_file),
        tls_key=str(pki.key_file),
        tls_client_ca=str(pki.ca_file),
        auth_file=str(tmp_path / "auth.yaml"),
    )
    decide = pb.DecideRequest(customer_id="m1", origin_channel="atm", event=atm_decline("m1").event)
    # no client certificate: the handshake fails, whatever the token
    with channel(server.port, pki.credentials()) as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        assert code_of(stub.Decide, decide, metadata=bearer(tokens["atm"]), timeout=5) is grpc.StatusCode.UNAVAILABLE
    # a certificate from another CA is refused too
    stranger = trustme.CA().issue_cert(ATM_CN, common_name=ATM_CN)
    with channel(server.port, pki.credentials(stranger)) as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        assert code_of(stub.Decide, decide, timeout=5) is grpc.StatusCode.UNAVAILABLE
    # the listed CN gets its roles: decide, not agent
    atm = pki.ca.issue_cert(ATM_CN, common_name=ATM_CN)
    with channel(server.port, pki.credentials(atm)) as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        assert not stub.Decide(decide, timeout=5).no_action
        assert code_of(stub.GetCustomerContext, pb.CustomerContextRequest(customer_id="m1"), timeout=5) is (
            grpc.StatusCode.PERMISSION_DENIED
        )
    # a valid certificate whose name is not in the auth file connects but is not a caller
    other = pki.ca.issue_cert("kiosk.bank.internal", common_name="kiosk.bank.internal")
    with channel(server.port, pki.credentials(other)) as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        assert code_of(stub.Decide, decide, timeout=5) is grpc.StatusCode.UNAUTHENTICATED
        # a token on top of an unlisted certificate still works (the token names the caller)
        assert not stub.Decide(decide, metadata=bearer(tokens["atm"]), timeout=5).no_action


def test_a_certificate_rotated_on_disk_is_served_on_the_next_connection(secure_server, pki, tokens, tmp_path):
    port = secure_server.port
    old = channel(port, pki.credentials())
    old_stub = pb_grpc.DecisionServiceStub(old)
    assert not old_stub.Decide(atm_decline("r1"), metadata=bearer(tokens["atm"]), timeout=5).no_action

    # rotation: a certificate from a new CA replaces the files (as a renewed Kubernetes Secret does)
    renewed = Pki(tmp_path / "renewed")
    pki.cert_file.write_bytes(renewed.cert_file.read_bytes())
    pki.key_file.write_bytes(renewed.key_file.read_bytes())

    def new_connection_uses_the_new_certificate() -> bool:
        with channel(port, renewed.credentials()) as ch:
            try:
                pb_grpc.DecisionServiceStub(ch).Decide(atm_decline("r2"), metadata=bearer(tokens["atm"]), timeout=2)
                return True
            except grpc.RpcError:
                return False

    wait_until(new_connection_uses_the_new_certificate, what="a new connection to present the renewed certificate")
    with channel(port, pki.credentials()) as ch:  # clients trusting only the old CA now fail the handshake
        assert code_of(pb_grpc.DecisionServiceStub(ch).Decide, atm_decline("r3"), metadata=bearer(tokens["atm"]),
                       timeout=5) is grpc.StatusCode.UNAVAILABLE
    # the connection made before the rotation was not dropped
    assert not old_stub.Decide(atm_decline("r4"), metadata=bearer(tokens["atm"]), timeout=5).no_action
    old.close()
    assert secure_server.server.tls.rotations == 1


def test_the_auth_file_is_reloaded_when_it_changes(secure_server, pki, tmp_path):
    token, digest = new_token()
    with channel(secure_server.port, pki.credentials()) as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        assert code_of(stub.Decide, atm_decline("n1"), metadata=bearer(token), timeout=5) is (
            grpc.StatusCode.UNAUTHENTICATED
        )
        auth = tmp_path / "auth.yaml"
        auth.write_text(auth.read_text() + f'  - name: kiosk\n    token_sha256: "{digest}"\n    roles: [decide]\n')

        def accepted() -> bool:
            try:
                stub.Decide(atm_decline("n1"), metadata=bearer(token), timeout=5)
                return True
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAUTHENTICATED
                return False

        wait_until(accepted, what="the new caller to be accepted")
        # a broken edit keeps the callers in effect
        auth.write_text("clients:\n  - name: kiosk\n    roles: [decide]\n")
        secure_server.server.reload_credentials()
        assert not stub.Decide(atm_decline("n2"), metadata=bearer(token), timeout=5).no_action


def test_reflection_can_be_turned_off(start_server, published):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server = start_server(reflection=False)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = reflection_pb2_grpc.ServerReflectionStub(server.channel).ServerReflectionInfo(iter([request]))
    assert code_of(list, responses) is grpc.StatusCode.UNIMPLEMENTED


def test_a_public_address_needs_an_auth_file():
    with pytest.raises(SettingsError, match="refusing to serve 0.0.0.0 without an auth file"):
        check_exposure(Settings(host="0.0.0.0"))
    check_exposure(Settings(host="0.0.0.0", insecure_no_auth=True))  # explicitly accepted: a warning only
    check_exposure(Settings(host="127.0.0.1"))
    assert main(["serve", "--host", "0.0.0.0", "--port", "0", "--metrics-port", "-1", "--redis-url",
                 "redis://127.0.0.1:1/0"]) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clients:\n  - name: a\n    roles: [decide]\n", "auth.yaml:2: client 'a' needs token_sha256 or cert_cn"),
        ("clients:\n  - name: a\n    token_sha256: secret\n    roles: [decide]\n",
         "auth.yaml:3: client 'a': token_sha256 must be the 64 hex digits"),
        ("clients:\n  - name: a\n    cert_cn: x\n    roles: [decide, root]\n", "auth.yaml:4: client 'a': unknown role 'root'"),
        ("clients:\n  - name: a\n    cert_cn: x\n    role: [decide]\n", "auth.yaml:4: unknown key 'role'"),
        ("clients:\n  - name: a\n    cert_cn: x\n    roles: [decide]\n  - name: a\n    cert_cn: y\n    roles: [crm]\n",
         "auth.yaml:5: client 'a' is already defined on line 2"),
        ("clients: [\n", "auth.yaml:2: YAML"),
    ],
)
def test_auth_file_errors_name_the_line(text, message):
    with pytest.raises(AuthFileError) as failure:
        AuthFile.parse(text, "auth.yaml")
    assert str(failure.value).startswith(message)


def test_nba_auth_token_prints_an_entry_the_server_accepts(capsys, tmp_path):
    assert main(["auth", "token", "atm-backend", "--roles", "decide,agent"]) == 0
    out = capsys.readouterr().out.splitlines()
    token = out[1].strip()
    (tmp_path / "auth.yaml").write_text("clients:\n" + "\n".join(out[3:]) + "\n")
    auth = AuthFile.read(tmp_path / "auth.yaml")
    client = auth.by_token(token)
    assert client is not None and client.name == "atm-backend" and client.roles == {"decide", "agent"}
    assert token not in (tmp_path / "auth.yaml").read_text()
    assert main(["auth", "check", str(tmp_path / "auth.yaml")]) == 0
    assert "atm-backend" in capsys.readouterr().out


def test_metrics_can_be_served_over_https_with_the_same_certificate(start_server, published, pki):
    import ssl
    import urllib.error
    import urllib.request

    server = start_server(tls_cert=str(pki.cert_file), tls_key=str(pki.key_file), metrics_port=0, metrics_tls=True)
    url = f"https://127.0.0.1:{server.server.metrics_port}/metrics"
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    with urllib.request.urlopen(url, context=context, timeout=5) as response:
        assert "nba_policy_version" in response.read().decode()
    with pytest.raises(urllib.error.URLError):  # a scraper that does not trust the CA
        urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=5)


AGENT_TEXTS_READING_PII = """\
offers:
  - id: agent_income_review
    name: Income review
    category: service
    events: [agent_contact]
    value: 1000.0
    prior: 0.5
    channels: [agent_desktop]
    variables:
      income: "attr('income')"
    content:
      agent_desktop: "Review the income of {first_name}."
    agent_script:
      en: "With your income of {income} you qualify for our premium account."
reasons:
  - id: declined_with_score
    event: atm_decline
    within: 7d
    score: 1000
    variables:
      score: "attr('credit_score')"
    text:
      en: "Declined at an ATM {ago}, credit score {score}"
"""


def test_agent_scripts_and_reasons_show_sensitive_values_only_to_pii_callers(
    start_server, redis_client, pki, tokens, tmp_path
):
    """A script or reason that reads a sensitive attribute renders it as missing for an agent without ``pii``:
    hiding the attribute from the profile is not enough when a text the agent reads can quote it."""
    policies = tmp_path / "policies"
    shutil.copytree(SAMPLE_POLICIES, policies)
    (policies / "pii.yaml").write_text(AGENT_TEXTS_READING_PII)
    PolicyStore(redis_client).publish(read_policy_dir(policies), author="tests", message="texts reading pii")
    server = start_server(
        tls_cert=str(pki.cert_file), tls_key=str(pki.key_file), auth_file=str(tmp_path / "auth.yaml")
    )
    with channel(server.port, pki.credentials()) as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        customer = profile("c9", timezone=daytime_zone(), income="48000", credit_score="512")
        stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=customer), metadata=bearer(tokens["crm"]), timeout=5)
        stub.Decide(atm_decline("c9"), metadata=bearer(tokens["atm"]), timeout=5)
        request = pb.CustomerContextRequest(customer_id="c9", include_best_actions=True)

        views = {
            caller: stub.GetCustomerContext(request, metadata=bearer(tokens[caller]), timeout=5)
            for caller in ("desk", "desk-pii")
        }

    def texts(view: pb.CustomerContextResponse) -> dict[str, str]:
        return {
            **{r.id: r.text for r in view.likely_reasons},
            **{a.offer_id: a.agent_script for a in view.best_actions if a.agent_script},
        }

    full, masked = texts(views["desk-pii"]), texts(views["desk"])
    assert full["declined_with_score"].endswith("credit score 512")
    assert full["agent_income_review"] == "With your income of 48000 you qualify for our premium account."
    # the same reasons and best actions (decided on the whole profile), their texts without the values
    assert masked.keys() == full.keys()
    assert not any("512" in text or "48000" in text for text in masked.values()), masked
    assert [a.offer_id for a in views["desk"].best_actions] == [a.offer_id for a in views["desk-pii"].best_actions]
    assert "income" not in views["desk"].profile.attributes and "credit_score" not in views["desk"].profile.attributes
