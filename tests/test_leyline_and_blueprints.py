"""Slot ordering and the blueprint registry."""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
from functools import partial

import pytest
import torch

from esper.kasmina import blueprint_registry
from esper.kasmina.blueprints import LORA_RANK
from esper.leyline import InjectionSpec, Topology, ordered_slots, slot_names
from esper.leyline.config import TELEMETRY_LEVELS, TelemetrySettings, json_reason, measured
from esper.leyline.events import TelemetryLevel
from esper.leyline.net import has_password, hidden_password, is_host_port, not_http, not_http2


def test_ordered_slots_is_execution_order() -> None:
    assert ordered_slots(["late", "early", "mid"]) == ("early", "mid", "late")
    assert ordered_slots({"late": 1, "mid": 2}) == ("mid", "late")
    assert ordered_slots(["mid_10", "late", "mid_2", "early"]) == (
        "early",
        "mid_2",
        "mid_10",
        "late",
    )
    for n in range(1, 7):
        names = slot_names(n)
        assert ordered_slots(reversed(names)) == names


@pytest.mark.parametrize("bad", [["early", "early"], ["middle"], ["mid_0"], ["mid_x"]])
def test_ordered_slots_rejects_bad_names(bad) -> None:
    with pytest.raises(ValueError):
        ordered_slots(bad)


def test_registry_names_are_the_design_set() -> None:
    assert set(blueprint_registry.names(Topology.CNN)) == {
        "norm",
        "attention",
        "depthwise",
        "conv_light",
        "conv_heavy",
        "bottleneck",
    }
    assert set(blueprint_registry.names(Topology.TRANSFORMER)) == {
        "norm",
        "lora",
        "attention",
        "mlp",
    }
    assert blueprint_registry.all_names() == [
        "attention",
        "bottleneck",
        "conv_heavy",
        "conv_light",
        "depthwise",
        "lora",
        "mlp",
        "norm",
    ]


def test_a_topology_may_be_named_by_its_value_and_bad_lookups_name_what_is_accepted() -> None:
    """``names(host.kind)`` (a string) was a bare KeyError 'cnn'; a list for a name a TypeError
    (unhashable) that germinate did not turn into its G0 refusal."""
    assert blueprint_registry.names("cnn") == blueprint_registry.names(Topology.CNN)
    assert blueprint_registry.get("lora", "transformer").topology is Topology.TRANSFORMER
    with pytest.raises(ValueError, match=r"unknown topology 'rnn'; accepted: \['cnn', 'trans"):
        blueprint_registry.names("rnn")
    with pytest.raises(ValueError, match=r"unknown blueprint \['norm'\] for a cnn host; acc"):
        blueprint_registry.get(["norm"], Topology.CNN)  # type: ignore[arg-type]


def test_duplicate_registration_fails() -> None:
    with pytest.raises(ValueError, match="already registered"):
        blueprint_registry.register("norm", Topology.CNN, "again")(lambda spec: torch.nn.Identity())


CNN = InjectionSpec("mid", 16, (16, 8, 8), Topology.CNN)
TF = InjectionSpec("mid", 32, (64, 32), Topology.TRANSFORMER)


@pytest.mark.parametrize(
    ("spec", "name", "expected"),
    [
        (CNN, "norm", 2 * 16),  # GroupNorm affine
        (CNN, "conv_light", 9 * 16 * 16 + 2 * 16),  # 3x3 conv (no bias) + GroupNorm affine
        (CNN, "conv_heavy", 9 * 16 * 16 + 2 * 16 + 9 * 16 * 16 + 16),
        (CNN, "depthwise", 9 * 16 + 2 * 16 + 16 * 16 + 16),
        (CNN, "attention", (16 * 4 + 4) + (4 * 16 + 16)),  # SE 16 -> 4 -> 16
        (CNN, "bottleneck", 16 * 4 + 2 * 4 + 9 * 4 * 4 + 2 * 4 + 4 * 16 + 16),
        (TF, "norm", 2 * 32),
        (TF, "lora", 2 * 32 * LORA_RANK),
        (TF, "attention", 2 * 32 + (32 * 96 + 96) + (32 * 32 + 32)),
        (TF, "mlp", 2 * 32 + (32 * 64 + 64) + (64 * 32 + 32)),
    ],
)
def test_param_counts_are_real(spec: InjectionSpec, name: str, expected: int) -> None:
    blueprint = blueprint_registry.get(name, spec.topology)
    assert blueprint.param_count(spec) == expected
    assert sum(p.numel() for p in blueprint.build(spec).parameters()) == expected


def test_the_telemetry_setting_names_the_event_levels() -> None:
    assert tuple(level.name.lower() for level in TelemetryLevel) == TELEMETRY_LEVELS
    with pytest.raises(ValueError, match="one of minimal, normal, debug, got 'loud'"):
        TelemetrySettings(level="loud")  # type: ignore[arg-type]


def test_json_reason_says_why_json_could_not_be_read() -> None:
    """Every JSON reader's one-line reason: the syntax error's place, a nesting too deep for
    Python, an integer too long to read, and any other error's own words."""

    def reason(text: str) -> str:
        try:
            json.loads(text)
        except (ValueError, RecursionError) as err:
            return json_reason(err)
        raise AssertionError(f"{text[:20]!r} was read")

    expecting = "Expecting property name enclosed in double quotes"
    assert reason('{"a": 1,}') == f"invalid JSON at line 1, column 9: {expecting}"
    assert reason('{\n"a": }') == "invalid JSON at line 2, column 6: Expecting value"
    # json's messages that end in "at" name where after it ("... control character at)")
    assert reason('{"s": "a\n') == "invalid JSON: Invalid control character at line 1, column 9"
    assert reason('{"s": "a') == "invalid JSON: Unterminated string starting at line 1, column 7"
    assert reason("[" * 100_000 + "]" * 100_000) == "nested too deeply"
    assert reason("9" * 5000) == "a 5000-digit integer; at most 4300 digits are read"
    assert json_reason(TypeError("the JSON object must be str")) == "the JSON object must be str"


@pytest.mark.parametrize(
    ("address", "taken"),
    [
        ("127.0.0.1:6379", True),
        ("localhost:6379", True),
        ("ray_head:6379", True),  # a container's name
        ("head.example.com.:6379", True),  # a final dot
        (f"{'a' * 64}.x:6390", False),  # no resolver takes a label this long (idna raised)
        ("hé.x:6390", False),  # idna's UnicodeError got out
        ("host:١٢", False),  # digits, but not ASCII ones
        ("host:0", False),
        ("host:65536", False),
        ("[::1]:6379", False),  # no later step could use it
        ("head", False),
        (6379, False),
    ],
)
def test_a_ray_heads_address_is_host_port(address: object, taken: bool) -> None:
    assert is_host_port(address) is taken


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # an HTTP URL's user part ends where its host part does: this was taken for the
        # password "5000/a" and refused, a run's MLflow URL with an "@" in its path with it
        ("http://host:5000/a@b", None),
        ("https://h/x?y=a:b@c", None),
        ("http://u:@h/", None),
        ("http://u:p@h:5000/x", "http://u:***@h:5000/x"),
        ("HTTPS://a:b@c@h/", "HTTPS://a:***@h/"),  # as HTTP clients read it: up to the last @
        ("http://u@h/?password=p", "http://u@h/?password=***"),
        # any other URL's as SQLAlchemy reads it: a password may hold a "/"
        ("postgresql://u:p/w@h/d", "postgresql://u:***@h/d"),
        ("postgresql://alice@srv:pw@host/d", "postgresql://alice@srv:***@host/d"),
        ("postgresql://u@h/d", None),
    ],
)
def test_a_password_is_read_where_the_urls_client_reads_it(url: str, shown: str | None) -> None:
    assert has_password(url) is (shown is not None)
    assert hidden_password(url) == (url if shown is None else shown)


def _one_reply(reply: bytes | None) -> tuple[int, threading.Thread]:
    """A server on 127.0.0.1 for one connection: it reads the request, then sends ``reply``
    and hangs up (None: it hangs up at once, reading nothing). Its port and thread."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with listener, listener.accept()[0] as conn:
            if reply is not None:
                conn.recv(4096)
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


@pytest.mark.parametrize(
    ("reply", "http", "http2"),
    [
        (b"HTTP/1.1 404 Not Found\r\n\r\n", None, "it does not speak HTTP/2 (it answered"),
        (b"HTTP/1.0 200 OK\r\n\r\nOK", None, "it does not speak HTTP/2"),
        (
            b"SSH-2.0-OpenSSH_9.2\r\n",
            "it does not speak HTTP (it answered 'SSH-2.0'",
            "it does not",
        ),
        (None, "it closed the connection without a reply", "it closed the connection"),
        (bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]), "it does not speak HTTP", None),  # HTTP/2 SETTINGS
    ],
)
def test_what_a_server_answers_is_named(reply: bytes | None, http: str, http2: str) -> None:
    """The start-up checks before a client that waits minutes (MLflow's over HTTP, Ray's over
    gRPC): any HTTP status is an answer (an MLflow server behind a proxy may refuse
    ``/health``); anything else is named."""
    for check, expected in ((partial(not_http, tls=False), http), (not_http2, http2)):
        port, thread = _one_reply(reply)
        reason = check("127.0.0.1", port, 5.0)
        thread.join(5)
        if expected is None:
            assert reason is None
        else:
            assert reason is not None and reason.startswith(expected), reason


def test_a_silent_or_absent_server_is_named() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts (the kernel), says nothing
        port = listener.getsockname()[1]
        silent = "it accepts connections but sent no answer within 0.5 s"
        assert not_http("127.0.0.1", port, 0.5, tls=False) == silent
        assert not_http2("127.0.0.1", port, 0.5) == "it sent no HTTP/2 reply within 0.5 s"
    assert not_http("127.0.0.1", port, 0.5, tls=False) == "Connection refused"
    port, thread = _one_reply(b"HTTP/1.1 200 OK\r\n\r\n")  # https asked of a plain server
    reason = not_http("127.0.0.1", port, 5.0, tls=True)
    thread.join(5)
    assert reason == "it does not speak TLS (an http:// server?)"


def test_a_tls_server_that_wants_a_client_certificate_is_left_to_the_client(tmp_path) -> None:
    """The check sends no certificate, so such a server ends the handshake: that is an answer
    (MLflow's client sends MLFLOW_TRACKING_CLIENT_CERT_PATH's); it was refused (a review)."""
    import datetime
    import ssl

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = tmp_path / "server.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    context.load_verify_locations(pem)
    context.verify_mode = ssl.CERT_REQUIRED  # a client certificate, or no handshake
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        # ssl.SSLError is an OSError: the handshake it refuses
        with listener, listener.accept()[0] as conn, contextlib.suppress(OSError):
            context.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert not_http("127.0.0.1", listener.getsockname()[1], 5.0, tls=True) is None
    thread.join(5)


def test_an_action_holds_what_the_event_log_can_hold() -> None:
    """A tempo of 2.0 or numpy's int64 and a reason of None were logged as lines the log's
    reader refuses (numpy's after the model had changed); "germinate" was a KeyError."""
    import numpy as np

    from esper.leyline import Action, Op

    alpha = Action(Op.SET_ALPHA_TARGET, slot="early", alpha_target=0.5, tempo=2)
    assert (alpha.tempo, alpha.alpha_target) == (2, 0.5)
    cases = [
        ({"tempo": 2.0}, r"Action.tempo must be an integer"),
        ({"tempo": np.int64(2)}, r"Action.tempo must be a Python int, got numpy's int64 2"),
        ({"tempo": True}, r"Action.tempo must be an integer"),
        ({"alpha_target": float("nan")}, r"Action.alpha_target must be a finite number"),
        ({"alpha_target": "0.5"}, r"Action.alpha_target must be a finite number"),
        ({"slot": 3}, r"Action.slot must be a str, got 3"),
        ({"reason": None}, r"Action.reason must be a str, got None"),
    ]
    base = {"slot": "early", "alpha_target": 0.5, "tempo": 2}
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            Action(Op.SET_ALPHA_TARGET, **{**base, **change})
    with pytest.raises(ValueError, match=r"op must be one of Op.WAIT, .* got 'germinate'"):
        Action("germinate", slot="early", blueprint="norm")  # type: ignore[arg-type]


def test_a_measured_value_is_a_finite_number_or_none() -> None:
    """What summaries, snapshots and progress lines hold: a missing, NaN or infinite value is
    None (shown as "—", written as null), a bool is no measure; numbers pass unchanged."""
    for value in (0, 3, -2.5, 1e308):
        assert measured(value) == value and type(measured(value)) is type(value)
    for value in (None, math.nan, math.inf, -math.inf, True, "1.0"):
        assert measured(value) is None
