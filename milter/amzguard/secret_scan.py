"""Finding the review secret in a message body, chunk by chunk. Pure: no I/O, no pymilter.

Why: a review request refused at end of data is answered with a 5xx, and whoever submitted it may bounce
it on its own with the original attached, headers and all, so with ``X-Amzguard-Channel: review <secret>``.
Behind Sendmail that is the MSP (``sendmail -t``, PHP's mail()): measured on Sendmail 8.17.1.9, a second
review request for one order submitted that way was refused by the MTA, and the MSP mailed a DSN from
``<>`` back through the MTA to the (outside) sender with the secret in its message/rfc822 part. Such a
bounce passes amzguard again, so amzguard looks for the secret in the bodies of null-sender messages and
refuses the ones that carry it (the MSP's own exit status, 69, already told the submitter).
"""

from __future__ import annotations


class SecretScan:
    """Whether ``needle`` occurs in the bytes fed so far, across chunk boundaries; keeps only a tail of
    ``len(needle) - 1`` bytes, so memory does not grow with the body."""

    __slots__ = ("needle", "found", "_tail")

    def __init__(self, needle: bytes) -> None:
        if not needle:
            raise ValueError("an empty secret cannot be searched for")
        self.needle = needle
        self.found = False
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        if self.found or not chunk:
            return
        data = self._tail + chunk
        if self.needle in data:
            self.found = True
            self._tail = b""
            return
        keep = len(self.needle) - 1
        self._tail = data[-keep:] if keep else b""
