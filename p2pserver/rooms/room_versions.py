"""The room versions p2pserver supports, as data.

Each algorithm that differs between room versions asks a named flag here
rather than comparing version strings, so adding a version is one entry.
Versions 10, 11 and 12 all use event format v3 (event IDs are the reference
hash), strict canonical JSON, and state resolution v2 (v2.1 in version 12).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from p2pserver.rooms.errors import UnsupportedRoomVersion


@dataclass(frozen=True, slots=True)
class RoomVersion:
    identifier: str
    # Room versions 6+: reject floats, big integers and duplicate keys.
    strict_canonical_json: bool
    # Room version 10 (MSC3667): power level values must be real integers.
    integer_power_levels: bool
    # Room version 10 (MSC3787): the knock_restricted join rule.
    knock_restricted_join_rule: bool
    # Room version 11 (MSC2176, MSC3821, MSC3989): updated redaction rules.
    updated_redaction_rules: bool
    # Room version 11 (MSC2174): `redacts` lives in the content.
    redacts_in_content: bool
    # Room version 11 (MSC2175): the create event's sender is the creator.
    use_room_create_sender: bool
    # Room version 12 (MSC4291): room ID is `!` + the create event's reference
    # hash; the create event has no room_id and is never listed in auth_events.
    room_id_is_create_event_hash: bool
    # Room version 12 (MSC4289): creators (sender + additional_creators) have
    # infinite power and may not appear in m.room.power_levels.
    privileged_creators: bool
    # Room version 12 (MSC4297): state resolution v2.1.
    state_res: Literal["v2", "v2.1"]


ROOM_V10 = RoomVersion(
    identifier="10",
    strict_canonical_json=True,
    integer_power_levels=True,
    knock_restricted_join_rule=True,
    updated_redaction_rules=False,
    redacts_in_content=False,
    use_room_create_sender=False,
    room_id_is_create_event_hash=False,
    privileged_creators=False,
    state_res="v2",
)
ROOM_V11 = RoomVersion(
    identifier="11",
    strict_canonical_json=True,
    integer_power_levels=True,
    knock_restricted_join_rule=True,
    updated_redaction_rules=True,
    redacts_in_content=True,
    use_room_create_sender=True,
    room_id_is_create_event_hash=False,
    privileged_creators=False,
    state_res="v2",
)
ROOM_V12 = RoomVersion(
    identifier="12",
    strict_canonical_json=True,
    integer_power_levels=True,
    knock_restricted_join_rule=True,
    updated_redaction_rules=True,
    redacts_in_content=True,
    use_room_create_sender=True,
    room_id_is_create_event_hash=True,
    privileged_creators=True,
    state_res="v2.1",
)

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {
    v.identifier: v for v in (ROOM_V10, ROOM_V11, ROOM_V12)
}
DEFAULT_ROOM_VERSION = ROOM_V12


def get_room_version(identifier: object) -> RoomVersion:
    """Look up a supported room version, or raise M_UNSUPPORTED_ROOM_VERSION."""
    if isinstance(identifier, RoomVersion):
        return identifier
    version = KNOWN_ROOM_VERSIONS.get(identifier) if isinstance(identifier, str) else None
    if version is None:
        supported = ", ".join(KNOWN_ROOM_VERSIONS)
        raise UnsupportedRoomVersion(
            f"unsupported room version {identifier!r} (supported: {supported})"
        )
    return version
