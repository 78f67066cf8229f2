"""Participants: the simulation of unreliable participants (:mod:`.unreliable`)."""

from tasks.participants.unreliable import (
    DATA_KINDS,
    REPLY_KINDS,
    ParticipantsConfig,
    check_kind,
    corrupt_data,
    corrupt_reply,
    unreliable_clients,
)

__all__ = [
    "DATA_KINDS",
    "REPLY_KINDS",
    "ParticipantsConfig",
    "check_kind",
    "corrupt_data",
    "corrupt_reply",
    "unreliable_clients",
]
