"""The MTA side of the milter protocol, for driving a running amzguard over its socket.

Built on the PyPI ``miltertest`` codec. It honours what the milter negotiated: steps the milter asked
not to receive are not sent, steps it marked no-reply are sent without waiting for an answer, exactly
as Postfix does.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from miltertest import client, codec, constants as c


def _encode_str_with_raw_octets(value: str) -> bytes:
    """Like miltertest's encoder, but lone surrogates go out as the raw 8-bit octets they stand for,
    so tests can send what a real MTA passes on from a non-UTF-8 client."""
    return f"{value}\0".encode("utf-8", "surrogateescape")


codec.encode_str = _encode_str_with_raw_octets
codec.codectypes["str"] = (_encode_str_with_raw_octets, codec.codectypes["str"][1])


def _encode_buf_bytes_too(value: str | bytes) -> bytes:
    """Body chunks as given: bytes unchanged (a latin-1 or binary body), str as UTF-8 (raw octets kept)."""
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


codec.encode_buf = _encode_buf_bytes_too
codec.codectypes["buf"] = (_encode_buf_bytes_too, codec.codectypes["buf"][1])

# Postfix announces local (sendmail(1)) submissions like this; smtpd sends the real peer.
LOCAL_PEER = ("localhost", "127.0.0.1", 0)
SMTP_PEER = ("client.example.net", "192.0.2.10", 40025)
POSTFIX_VERSION = "Postfix 3.7.11"
"""Postfix's ``v`` macro (``$mail_name $mail_version``), in its default ``milter_connect_macros``."""


BASE_HEADERS = (
    ("Received", "from client.example.net by mx.shop.test with ESMTP id 4XTESTQ1D"),
    ("From", "Example Shop <shop@shop.test>"),
    ("Date", "Sun, 22 Nov 2026 10:00:00 +0000"),
    ("Message-ID", "<test-1@shop.test>"),
)


@dataclass(frozen=True)
class Reply:
    command: str
    fields: dict

    @property
    def code(self) -> str | None:
        text = self.fields.get("text")
        if self.command == c.SMFIR_REPLYCODE:
            return self.fields["smtpcode"]
        return text


def connect_socket(spec: str, timeout: float = 10.0) -> socket.socket:
    if spec.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = spec[5:]
    else:
        port, host = spec.split(":", 1)[1].split("@")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        target = (host, int(port))
    sock.settimeout(timeout)
    sock.connect(target)
    return sock


def wait_for_socket(spec: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            connect_socket(spec, 1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class FakeMta:
    """One milter connection as an MTA would hold it."""

    def __init__(self, spec: str) -> None:
        self.sock = connect_socket(spec)
        self.conn = client.MilterConnection(self.sock)
        self.body_replies: list[Reply | None] = []
        self.actions, self.protocol = self.conn.optneg_mta()

    def close(self) -> None:
        try:
            self.conn._send(c.SMFIC_QUIT)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> FakeMta:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _step(self, skip_flag: int, noreply_flag: int, cmd: str, **args: object) -> Reply | None:
        if self.protocol & skip_flag:
            return None
        if self.protocol & noreply_flag:
            self.conn._send(cmd, **args)
            return None
        command, fields = self.conn.send_ar(cmd, **args)
        return Reply(command, fields)

    def macros(self, stage: str, **values: str) -> None:
        self.conn.send_macro(stage, **values)

    def connect(self, peer: tuple[str, str, int] = SMTP_PEER, version: str | None = POSTFIX_VERSION) -> Reply | None:
        """``version``: the ``v`` macro, which Postfix sends at connect by default (None: not sent)."""
        hostname, address, port = peer
        if version is not None:
            self.macros(c.SMFIC_CONNECT, v=version)
        return self._step(
            c.SMFIP_NOCONNECT, c.SMFIP_NR_CONN, c.SMFIC_CONNECT,
            hostname=hostname, family="4", port=port, address=address,
        )

    def mail(self, sender: str, *esmtp: str) -> Reply | None:
        return self._step(c.SMFIP_NOMAIL, c.SMFIP_NR_MAIL, c.SMFIC_MAIL, args=[sender, *esmtp])

    def rcpt(self, recipient: str, *esmtp: str) -> Reply | None:
        return self._step(c.SMFIP_NORCPT, c.SMFIP_NR_RCPT, c.SMFIC_RCPT, args=[recipient, *esmtp])

    def data(self) -> Reply | None:
        return self._step(c.SMFIP_NODATA, c.SMFIP_NR_DATA, c.SMFIC_DATA)

    def header(self, name: str, value: str) -> Reply | None:
        return self._step(c.SMFIP_NOHDRS, c.SMFIP_NR_HDR, c.SMFIC_HEADER, name=name, value=value)

    def eoh(self) -> Reply | None:
        return self._step(c.SMFIP_NOEOH, c.SMFIP_NR_EOH, c.SMFIC_EOH)

    def body(self, chunk: str | bytes) -> Reply | None:
        # Not through _step: miltertest's send_ar does not know SKIP, a legal answer to a body chunk.
        if self.protocol & c.SMFIP_NOBODY:
            return None
        if self.protocol & c.SMFIP_NR_BODY:
            self.conn._send(c.SMFIC_BODY, buf=chunk)
            return None
        self.conn._send(c.SMFIC_BODY, buf=chunk)
        return Reply(*self.conn.recv())

    def eom(self, queue_id: str | None = "4XTESTQ1D") -> list[Reply]:
        if queue_id is not None:  # None: like an MTA that sends no macros at all
            self.macros(c.SMFIC_BODYEOB, i=queue_id)
        self.conn._send(c.SMFIC_BODYEOB)
        replies = []
        while True:
            command, fields = self.conn.recv()
            replies.append(Reply(command, fields))
            if command in client.DISPOSITION_REPLIES:
                return replies

    def abort(self) -> None:
        self.conn._send(c.SMFIC_ABORT)

    def message(
        self,
        sender: str,
        recipients: list[str],
        headers: list[tuple[str, str]] = (),
        body: str | bytes | list[str] | list[bytes] = "Hello.\r\n",
        peer: tuple[str, str, int] = SMTP_PEER,
        queue_id: str | None = "4XTESTQ1D",
        base_headers: tuple[tuple[str, str], ...] = BASE_HEADERS,
        version: str | None = POSTFIX_VERSION,
    ) -> tuple[dict[str, Reply | None], list[Reply]]:
        """A whole transaction; returns the RCPT replies and the end-of-message replies (the DATA reply
        alone when the milter accepted the message at DATA)."""
        self.connect(peer, version)
        self.mail(sender)
        rcpt_replies = {r: self.rcpt(r) for r in recipients}
        accepted = [r for r, reply in rcpt_replies.items() if reply is None or reply.command == c.SMFIR_CONTINUE]
        if not accepted:
            return rcpt_replies, []
        if queue_id is not None:
            self.macros(c.SMFIC_DATA, i=queue_id)  # Postfix's milter_data_macros: i
        data_reply = self.data()
        if data_reply is not None and data_reply.command == c.SMFIR_ACCEPT:
            # Accepted at DATA: as Postfix does, no header, body or end of message for this message.
            return rcpt_replies, [data_reply]
        # libmilter ignores end-of-message straight after DATA; a real MTA always sends some header fields.
        for name, value in [*base_headers, *headers]:
            self.header(name, value)
        self.eoh()
        self.body_replies = []
        for chunk in [body] if isinstance(body, (str, bytes)) else body:
            reply = self.body(chunk)
            self.body_replies.append(reply)
            if reply is not None and reply.command == c.SMFIR_SKIP:
                break  # as Postfix does: the rest of the body is not sent
        return rcpt_replies, self.eom(queue_id)
