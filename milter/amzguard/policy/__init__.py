"""The decision: which recipients of a message may receive it, and what the MTA must do about the rest.

Everything here is pure: facts in, decisions and milter actions out. A small package by layer:

- ``model``: enums, settings, the facts of one message, a decision, the store's questions and records;
- ``channels``: the channel rules (review request, reply, critical message), each declaring what it
  needs (header fields, body, store questions, records, fields to strip);
- ``decide``: ``Policy``, which combines its rules' declarations and decides per recipient;
- ``actions``: the milter actions and the plan of one message.

The content rules (what a granted message may contain) are the ``amzguard.content`` package; the
transaction (transaction.py) drives both for the adapter, ``explain`` and ``lint``. Everything is
re-exported here, so ``from amzguard.policy import X`` keeps working.
"""

from ..address import format_address
from .actions import (
    AddRecipient,
    AddressField,
    Change,
    ChangeHeader,
    DeleteHeader,
    DeleteRecipient,
    MessagePlan,
    Reject,
    decision_text,
    grouped_refusal_text,
    orcpt_parameter,
    plan_message,
    refusal_address,
    refusal_text,
)
from .channels import (
    CONTENT_HEADERS,
    MAX_REFERENCED_IDS,
    ChannelRule,
    CriticalChannel,
    ReplyChannel,
    ReviewChannel,
    TaggedChannelRule,
    message_ids,
    referenced_ids,
    sender_allowed,
    tag_keyword,
    tag_value_matches,
)
from .decide import CHANNEL_RULES, Policy, possible_decisions, tagged_channels
from .model import (
    PROACTIVE_CHANNELS,
    REFUSAL_CODE,
    REFUSAL_STATUS,
    BuyerMessage,
    Channel,
    CriticalChannelSettings,
    Decision,
    MessageFacts,
    MissingOrderId,
    MixedRecipients,
    Mode,
    Outcome,
    PolicySettings,
    Reason,
    ReplyChannelSettings,
    ReplyCheck,
    ReviewChannelSettings,
    ProactiveSent,
    ReviewSent,
    StoreQuestions,
    StoreRecord,
    SubmissionPath,
)

__all__ = [
    "AddRecipient",
    "BuyerMessage",
    "CHANNEL_RULES",
    "CONTENT_HEADERS",
    "Change",
    "Channel",
    "ChannelRule",
    "CriticalChannel",
    "CriticalChannelSettings",
    "Decision",
    "DeleteHeader",
    "AddressField",
    "ChangeHeader",
    "DeleteRecipient",
    "MAX_REFERENCED_IDS",
    "MessageFacts",
    "MessagePlan",
    "MissingOrderId",
    "MixedRecipients",
    "Mode",
    "Outcome",
    "PROACTIVE_CHANNELS",
    "Policy",
    "PolicySettings",
    "REFUSAL_CODE",
    "REFUSAL_STATUS",
    "Reason",
    "Reject",
    "ReplyChannel",
    "ReplyChannelSettings",
    "ReplyCheck",
    "ReviewChannel",
    "ReviewChannelSettings",
    "ReviewSent",
    "StoreQuestions",
    "StoreRecord",
    "SubmissionPath",
    "TaggedChannelRule",
    "decision_text",
    "format_address",
    "grouped_refusal_text",
    "message_ids",
    "orcpt_parameter",
    "plan_message",
    "possible_decisions",
    "refusal_address",
    "refusal_text",
    "referenced_ids",
    "sender_allowed",
    "tagged_channels",
    "tag_keyword",
    "tag_value_matches",
]

# Review requests recognised without the tag (issue 12): the facts beyond the sender and the entries.
from .model import NO_ORIGIN, Origin, RecognisedBy  # noqa: E402
from .recognise import CriterionError, RecogniseEntry, SubjectPattern, client_address, client_network  # noqa: E402

__all__ += ["CriterionError", "NO_ORIGIN", "Origin", "RecognisedBy", "RecogniseEntry", "SubjectPattern",
            "client_address", "client_network"]  # fmt: skip

# The daily limit of proactive messages (issue 12 item 7; policy/limits.py).
from .limits import NO_LIMITS, LimitError, LimitSettings, parse_limits, utc_day  # noqa: E402

__all__ += ["LimitError", "LimitSettings", "NO_LIMITS", "ProactiveSent", "parse_limits", "utc_day"]
# Approved senders (issue 12): who may write to buyers' relay addresses.
from .senders import NO_APPROVED_SENDERS, ApprovedSenders, parse_approved  # noqa: E402

__all__ += ["ApprovedSenders", "NO_APPROVED_SENDERS", "parse_approved"]
