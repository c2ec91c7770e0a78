"""Real-IAD Variety category subsets S1 / S2 / S3 of the DPDiff-AD paper (Appendix A), and "Full".

The lists are copied verbatim, in the paper's order, from Appendix A of the DPDiff-AD paper
("Category Breakdown of S1, S2, and S3 in Real-IAD Variety"): S1 has 30 categories, S2 60 and
S3 100. The paper says the partition was defined by the Real-IAD authors with a randomised
selection; as printed, the lists are nested prefixes of one ordering (S1 = first 30 of S2,
S2 = first 60 of S3), so S1 is a subset of S2, which is a subset of S3. "Full" is every category
found on disk (the 160 JSON files of Real-IAD Variety), resolved by :func:`subset_categories`.

The names are the paper's spelling (including the upper-case ``D_sub_connector``,
``DVD_switch``, ``LED_indicator``, ``PLCC_socket``, ``VR_joystick``). Public lists of the 160
dataset folders spell some of them differently (``D-sub-connector``, ``chip-inductor``,
``common-mode-choke``, ``lilypad_led``, ...: 1 of the 30 S1 names, 7 of the 60 S2 names, 20 of the
100 S3 names differ). :func:`subset_categories` therefore matches every name to the categories on
disk through one normalisation (:func:`dpdiff.data.readers.realiad_layout.normalize_category`: case,
hyphens, underscores and spaces ignored) and returns the on-disk spelling; a name that matches
nothing is an error listing it with the closest names on disk.
"""

from __future__ import annotations

from pathlib import Path

from dpdiff.data.readers.realiad_layout import list_variety_categories, match_categories, normalize_category
from dpdiff.utils.errors import ConfigError

__all__ = ["S1", "S2", "S3", "SUBSETS", "SUBSET_NAMES", "FULL", "subset_categories", "normalize_category"]

#: S3: 100 categories (paper, Appendix A).
S3: tuple[str, ...] = (
    "2pin_block_plug",
    "3_adapter",
    "3pin_aviation_connector",
    "4_wire_stepping_motor",
    "D_sub_connector",
    "DVD_switch",
    "LED_indicator",
    "PLCC_socket",
    "VR_joystick",
    "access_card",
    "accurate_detection_switch",
    "aircraft_model_head",
    "angled_toggle_switch",
    "audio_jack_socket",
    "bag_buckle",
    "ball_pin",
    "balun_transformer",
    "battery",
    "battery_holder_connector",
    "battery_socket_connector",
    "bend_connector",
    "blade_switch",
    "blue_light_switch",
    "bluetooth_module",
    "boost_converter_module",
    "bread_model",
    "brooch_clasp_accessory",
    "button_battery_holder",
    "button_motor",
    "button_switch",
    "car_door_lock_switch",
    "ceramic_fuse",
    "ceramic_wave_filter",
    "charging_port",
    "chip_inductor",
    "circuit_breaker",
    "circular_aviation_connector",
    "common_mode_choke",
    "common_mode_filter",
    "connector",
    "connector_housing_female",
    "console_switch",
    "crimp_st_cable_mount_box",
    "dc_jack",
    "dc_power_connector",
    "detection_switch",
    "duckbill_circuit_breaker",
    "earphone_audio_unit",
    "effect_transistor",
    "electronic_watch_movement",
    "ethernet_connector",
    "ferrite_bead",
    "ffc_connector_plug",
    "flow_control_valve",
    "flower_copper_shape",
    "flower_velvet_fabric",
    "fork_crimp_terminal",
    "fuse_cover",
    "fuse_holder",
    "gear",
    "gear_motor",
    "green_ring_filter",
    "hairdryer_switch",
    "hall_effect_sensor",
    "headphone_jack_female",
    "headphone_jack_socket",
    "hex_plug",
    "humidity_sensor",
    "ingot_buckle",
    "insect_metal_parts",
    "inverter_connector",
    "jam_jar_model",
    "joystick_switch",
    "kfc_push_key_switch",
    "knob_cap",
    "laser_diode",
    "lattice_block_plug",
    "lego_pin_connector_plate",
    "lego_propeller",
    "lego_reel",
    "lego_technical_gear",
    "lego_turbine",
    "lighting_connector",
    "lily_pad_led",
    "limit_switch",
    "lithium_battery_plug",
    "littel_fuse",
    "little_cow_model",
    "lock",
    "long_zipper",
    "meteor_hammer_arrowhead",
    "miniature_laser_module",
    "miniature_lifting_motor",
    "miniature_motor",
    "miniature_stepper_motor",
    "mobile_charging_connector",
    "model_steering_module",
    "monitor_socket",
    "motor_bracket",
    "motor_gear_reducer",
)

# As printed, S1 and S2 are the first 30 and 60 names of S3 (tests/data/test_realiad.py checks all three
# lists against the paper's text when it is available).
#: S2: 60 categories (paper, Appendix A).
S2: tuple[str, ...] = S3[:60]
#: S1: 30 categories (paper, Appendix A).
S1: tuple[str, ...] = S3[:30]

FULL = "Full"
#: Fixed subsets; "Full" (all categories on disk) is resolved by :func:`subset_categories`.
SUBSETS: dict[str, list[str]] = {"S1": list(S1), "S2": list(S2), "S3": list(S3)}
SUBSET_NAMES = ("S1", "S2", "S3", FULL)


def subset_categories(name: str, root: Path | str | None = None, json_dir: Path | str | None = None) -> list[str]:
    """Categories of subset ``name`` (``"S1"``, ``"S2"``, ``"S3"`` or ``"Full"``).

    Without ``root``: the paper's names, in the paper's order. With ``root`` (a Real-IAD Variety
    root): the names of the categories found on disk
    (:func:`dpdiff.data.readers.realiad_layout.list_variety_categories`) that match the paper's names
    ignoring case, hyphens, underscores and spaces, in the paper's order (``"D_sub_connector"``
    gives ``"D-sub-connector"`` when that is the folder/JSON name). A name that matches nothing
    (or several names) raises :class:`ValueError` listing every such name with the closest names
    on disk. ``"Full"`` needs ``root`` and returns every category on disk, sorted.
    """
    if name not in SUBSET_NAMES:
        raise ConfigError(f"unknown Real-IAD Variety subset {name!r}; known: {list(SUBSET_NAMES)}")
    if root is None:
        if name == FULL:
            raise ValueError("subset 'Full' is every category on disk: pass root=<Real-IAD Variety root>")
        return list(SUBSETS[name])
    on_disk = list_variety_categories(Path(root), json_dir=json_dir)
    if name == FULL:
        return on_disk
    return match_categories(SUBSETS[name], on_disk, what=f"categories of subset {name}", where=f" under {str(root)!r}")
