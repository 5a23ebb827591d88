"""The demo's story: what a shop sends, along which path, and what amzguard promises to do with it.

The story is data. Each :class:`Step` names the path a shop would use (its shop system over SMTP, or PHP
``mail()``, which runs sendmail(1)), the envelope, the message, and the :class:`Outcome` that must be seen on
the real Postfix. Adding a step is adding one ``Step(...)`` to :data:`STORY`; when the milter's behaviour
changes on purpose (a content rule refuses more, the sendmail(1) path refuses a mixed message whole), the
step's ``expect=`` is the one line to change. ``make demo`` and tests/e2e/test_demo.py both judge every step
against it, so the demo cannot show a decision the milter no longer takes.

Every address, order id and notice here is made up; none is a real buyer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

SHOP = "shop@shop.test"
"""The shop system: order mail, and the review mailer of its Amazon plugin (a local mailbox: bounces land there)."""
SUPPORT = "support@shop.test"
"""Customer service, answering buyers from a mail client."""
OWNER = "owner@shop.test"
CUSTOMER = "anna.berger@example.org"
"""A customer of the shop's own web store: not an Amazon buyer."""
MARKED_BUYER = "blacklisted-40417@amazon.fr"
"""An Amazon buyer as magnalister imports it: the ``blacklisted-`` marker on the buyer's address."""
UNMARKED_BUYER = "40417@amazon.fr"
RELAY_BUYER = "q7x2k9m4p1z8w3v5@marketplace.amazon.de"
"""An Amazon buyer's anonymised relay address."""
OTHER_RELAY_BUYER = "m4n8b2v6c1x5z9l3@marketplace.amazon.co.uk"
LEARN_ADDRESS = "optout@learn.shop.test"
"""Where the shop forwards Amazon's opt-out notices: Postfix pipes it into ``amzguard optout learn``."""
LEARN_SERVICE = "amzguard-optout"
AMAZON_NOTICES = "seller-notification@amazon.example"

ORDER_SHIPPED = "302-4417730-5583019"
"""The marked buyer's order: confirmed, asked for a review once, then the buyer opts out."""
ORDER_LATER = "302-7719204-1180462"
"""A later order of the same buyer."""
ORDER_RELAY = "028-3365172-9904518"
ORDER_OTHER = "026-5521908-3317740"
WEB_ORDER = "10045"
"""An order of the shop's own web store."""

TAG_HEADER = "X-Amzguard-Channel"
SECRET_PLACEHOLDER = "{secret}"
"""Stands for the demo's review secret in header values; the demo fills it in when it sends."""
REVIEW_TAG = (TAG_HEADER, f"review {SECRET_PLACEHOLDER}")


class Via(StrEnum):
    SMTP = "SMTP"
    """The shop system talks SMTP to the MTA (smtpd_milters)."""
    SENDMAIL = "sendmail"
    """PHP ``mail()`` pipes the message into ``sendmail -t -i`` (its default ``sendmail_path``; shops add ``-f``):
    recipients from the headers, non_smtpd_milters."""


def decided(decision: str, reason: str, channel: str = "none") -> str:
    """One recipient decision as amzguard's decision line writes it (the fields after ``stage=``)."""
    return f"channel={channel} decision={decision} reason={reason}"


@dataclass(frozen=True)
class Outcome:
    """What a step leads to; the same shape for what the story promises and for what the run saw.

    ``reply``: the SMTP reply code the shop system got for the message (the RCPT reply when no recipient was
    accepted, else the reply to the message); None on the sendmail(1) path, where ``sendmail`` exits 0 as soon
    as the message is in the maildrop. ``decisions``: amzguard's decision per recipient (:func:`decided`).
    ``delivered``: where copies arrived: ``sink:ADDRESS`` (relayed to the internet, envelope recipient as
    relayed), ``mailbox:USER`` (a local mailbox of shop.test), ``pipe:SERVICE`` (a Postfix pipe transport).
    ``bounced``: ``USER:ADDRESS``, a bounce in USER's mailbox naming ADDRESS (its Original-Recipient, else
    its Final-Recipient). ``learned``: buyers added to the opt-out register. Order never matters.
    """

    reply: int | None = None
    decisions: tuple[str, ...] = ()
    delivered: tuple[str, ...] = ()
    bounced: tuple[str, ...] = ()
    learned: tuple[str, ...] = ()

    def normalised(self) -> "Outcome":
        """Sorted and case-folded where the MTA folds case, so two outcomes compare field by field."""
        return Outcome(
            reply=self.reply,
            decisions=tuple(sorted(self.decisions)),
            delivered=tuple(sorted(item.lower() for item in self.delivered)),
            bounced=tuple(sorted(item.lower() for item in self.bounced)),
            learned=tuple(sorted(item.lower() for item in self.learned)),
        )


@dataclass(frozen=True)
class Step:
    key: str
    """Short id (JSON report, tests)."""
    title: str
    via: Via
    sender: str
    to: tuple[str, ...]
    """Envelope recipients; the ``To:`` header names ``header_to`` (default: the same). On the sendmail(1) path,
    which reads the recipients from the headers, the others go in a ``Bcc:`` header (sendmail removes it)."""
    subject: str
    body: str
    expect: Outcome
    why: str
    """One sentence for the reader: the rule this step shows."""
    headers: tuple[tuple[str, str], ...] = ()
    header_to: tuple[str, ...] = field(default=())
    raw: str | None = None
    """A complete message to send as it is (Amazon's notice) instead of one built from the fields above."""


ORDER_BODY = (
    "Hello,\n\nyour order {order} has shipped today and should arrive within three working days.\n\n"
    "Kind regards\nThe shop team\n"
)
REVIEW_BODY = (
    "Hello,\n\nwe hope your order {order} arrived well. If you have a moment, you can share your experience"
    " of it on Amazon.\n\nKind regards\nThe shop team\n"
)

OPT_OUT_NOTICE = f"""\
From: Amazon Seller Notifications <{AMAZON_NOTICES}>
To: {LEARN_ADDRESS}
Subject: Your message to a buyer could not be delivered
Date: Mon, 30 Nov 2026 08:00:00 +0000
Message-ID: <demo-notice-1@amazon.example>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Dear Seller,

We were unable to deliver the message you sent for order [{ORDER_SHIPPED}] because the buyer has
chosen to opt out of receiving unsolicited messages from sellers.
"""
"""Made up in the wording seller tools quote (English form, 2017); it names only the order."""


STORY: tuple[Step, ...] = (
    Step(
        "order-customer", "Order confirmation to a customer", Via.SMTP, SHOP, (CUSTOMER,),
        f"Your order {WEB_ORDER} has shipped", ORDER_BODY.format(order=WEB_ORDER),
        Outcome(250, (decided("deliver", "not-buyer"),), delivered=(f"sink:{CUSTOMER}",)),
        "Mail to anyone who is not an Amazon buyer passes untouched.",
    ),
    Step(
        "order-marked", "Same to a blacklisted- buyer", Via.SMTP, SHOP, (MARKED_BUYER,),
        f"Your order {ORDER_SHIPPED} has shipped", ORDER_BODY.format(order=ORDER_SHIPPED),
        Outcome(550, (decided("refuse", "buyer-mail"),)),
        "Amazon forbids order and shipping mail to buyers: refused, the shop system gets the 550 at once.",
    ),
    Step(
        "order-relay", "Same to a relay buyer (PHP mail())", Via.SENDMAIL, SHOP, (RELAY_BUYER,),
        f"Your order {ORDER_RELAY} has shipped", ORDER_BODY.format(order=ORDER_RELAY),
        Outcome(None, (decided("refuse", "buyer-mail"),), bounced=(f"shop:{RELAY_BUYER}",)),
        "sendmail(1) cannot be answered with a refusal: Postfix bounces the message to the shop instead.",
    ),
    Step(
        "order-bcc-owner", "Order mail to buyer, owner in Bcc", Via.SMTP, SHOP, (OTHER_RELAY_BUYER, OWNER),
        f"Your order {ORDER_OTHER} has shipped", ORDER_BODY.format(order=ORDER_OTHER),
        Outcome(250, (decided("refuse", "buyer-mail"), decided("deliver", "not-buyer")),
                delivered=("mailbox:owner",), bounced=(f"shop:{OTHER_RELAY_BUYER}",)),
        "The owner still gets the copy; the buyer's is bounced to the shop, naming the buyer.",
        header_to=(OTHER_RELAY_BUYER,),
    ),
    Step(
        "review", "Tagged review request (PHP mail())", Via.SENDMAIL, SHOP, (MARKED_BUYER,),
        f"How was your order {ORDER_SHIPPED}?", REVIEW_BODY.format(order=ORDER_SHIPPED),
        Outcome(None, (decided("deliver-unmarked", "channel", "review"),), delivered=(f"sink:{UNMARKED_BUYER}",)),
        "One review request per order is allowed: it reaches the buyer with the marker removed, the tag deleted.",
        headers=(REVIEW_TAG,),
    ),
    Step(
        "review-again", "Second review request, same order", Via.SMTP, SHOP, (MARKED_BUYER,),
        f"Reminder: how was your order {ORDER_SHIPPED}?", REVIEW_BODY.format(order=ORDER_SHIPPED),
        Outcome(550, (decided("refuse", "duplicate-review", "review"),)),
        "Amazon allows one request per order; amzguard remembers the first.",
        headers=(REVIEW_TAG,),
    ),
    Step(
        "important", "[Important] question (PHP mail())", Via.SENDMAIL, SHOP, (RELAY_BUYER,),
        f"[Important] Delivery appointment for order {ORDER_RELAY}",
        f"Hello,\n\nthe carrier needs a delivery appointment for order {ORDER_RELAY}.\n"
        "Please reply with a day that suits you.\n\nKind regards\nThe shop team\n",
        Outcome(None, (decided("deliver", "channel", "critical"),), delivered=(f"sink:{RELAY_BUYER}",)),
        "Messages needed to complete the order, marked [Important] in the subject, pass.",
    ),
    Step(
        "reply", "Reply to the buyer's question", Via.SMTP, SUPPORT, (RELAY_BUYER,),
        f"Re: Question about order {ORDER_RELAY}",
        f"Hello,\n\nyes, the parcel for order {ORDER_RELAY} can be left with a neighbour.\n\n"
        "Kind regards\nCustomer service\n",
        Outcome(250, (decided("deliver", "channel", "reply"),), delivered=(f"sink:{RELAY_BUYER}",)),
        "A reply in a thread the buyer started (In-Reply-To an Amazon Message-ID) passes.",
        headers=(("In-Reply-To", "<0102018c4b1e7a2f-demo@marketplace.amazon.de>"),),
    ),
    Step(
        "optout-notice", "Amazon's opt-out notice, forwarded", Via.SMTP, AMAZON_NOTICES, (LEARN_ADDRESS,),
        "Your message to a buyer could not be delivered", "",
        Outcome(250, (decided("deliver", "not-buyer"),), delivered=(f"pipe:{LEARN_SERVICE}",),
                learned=(UNMARKED_BUYER,)),
        "The notice names only the order; amzguard knows which buyer got its review request, and registers them.",
        raw=OPT_OUT_NOTICE,
    ),
    Step(
        "review-opted-out", "Review request after the opt-out", Via.SMTP, SHOP, (MARKED_BUYER,),
        f"How was your order {ORDER_LATER}?", REVIEW_BODY.format(order=ORDER_LATER),
        Outcome(550, (decided("refuse", "opted-out", "review"),)),
        "A buyer who opted out gets no more review requests, for any order (replies and [Important] still pass).",
        headers=(REVIEW_TAG,),
    ),
)
