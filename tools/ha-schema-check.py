#!/usr/bin/env python3
"""Check MQTT discovery configs against Home Assistant's own schemas.

    tools/ha-schema-check.py [--prefix homeassistant] FILE.json

FILE.json holds a JSON array of {"topic": "...", "payload": {...}} discovery
messages, topics like homeassistant/binary_sensor/<node>/<object>/config. For each
message this does what Home Assistant's MQTT discovery does (the code in
homeassistant/components/mqtt/discovery.py of the installed version): match the
topic with HA's TOPIC_MATCHER, require a supported component, expand abbreviations
with HA's ABBREVIATIONS / DEVICE_ABBREVIATIONS / ORIGIN_ABBREVIATIONS, validate
`origin` with HA's MQTT_ORIGIN_INFO_SCHEMA, substitute `~`; then it validates the
result with DISCOVERY_SCHEMA from homeassistant/components/mqtt/<component>.py.

It also fails a message on:
  * keys HA would silently drop: the discovery schemas use extra=vol.REMOVE_EXTRA,
    so an unknown key (usually a typo such as `stat_topic`) is discarded without
    any error; this compares keys before and after validation, nested ones too;
  * warnings HA logs while validating (e.g. cv.deprecated keys);
  * no `unique_id`; no `device` with non-empty `identifiers`, or a device without
    `name`; no availability (`availability_topic` or `availability`);
  * a `unique_id` or topic used by more than one message in the file;
  * an `event` entity whose value_template, rendered by HA's template engine, does not
    turn a start message into one of its event_types, or does not render an end
    message empty (HA ignores an empty payload, so an event triggers once).

Exit status: 0 if every message passes, 1 if any fails, 2 on usage/setup errors.

It needs the `homeassistant` package (tools/ha-venv.sh installs the pinned one).
If the running python lacks it, the script re-runs itself with the venv's python
at ${HEARKEN_HA_VENV:-~/.cache/hearken/ha-venv}.
"""
from __future__ import annotations

import argparse
import copy
import difflib
import importlib
import json
import logging
import os
import sys
from typing import Any

DEFAULT_VENV = os.environ.get(
    "HEARKEN_HA_VENV", os.path.join(os.path.expanduser("~"), ".cache", "hearken", "ha-venv")
)


def _reexec_in_venv() -> None:
    venv_python = os.path.join(DEFAULT_VENV, "bin", "python")
    if os.path.realpath(sys.prefix) != os.path.realpath(DEFAULT_VENV) and os.access(
        venv_python, os.X_OK
    ):
        os.execv(venv_python, [venv_python, os.path.abspath(__file__), *sys.argv[1:]])
    print(
        "error: the homeassistant package is not importable and no venv was found at "
        f"{DEFAULT_VENV}; run tools/ha-venv.sh first",
        file=sys.stderr,
    )
    sys.exit(2)


try:
    import voluptuous as vol
    from voluptuous.humanize import humanize_error

    from homeassistant.const import __version__ as HA_VERSION
    import homeassistant.helpers.config_validation as cv
    from homeassistant.components.mqtt import discovery as ha_discovery
    from homeassistant.components.mqtt.abbreviations import (
        ABBREVIATIONS,
        DEVICE_ABBREVIATIONS,
    )
except ImportError:
    _reexec_in_venv()

try:  # added to HA in 2023.8 together with the `origin` discovery key
    from homeassistant.components.mqtt.abbreviations import ORIGIN_ABBREVIATIONS
except ImportError:  # pragma: no cover - older HA
    ORIGIN_ABBREVIATIONS = None

# Keys discovery.py itself adds to / removes from the payload before validation.
CONF_PLATFORM = "platform"
TOPIC_BASE = getattr(ha_discovery, "TOPIC_BASE", "~")


class _Capture(logging.Handler):
    """Collects WARNING+ records HA logs while a schema runs (cv.deprecated etc.)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def expand(payload: dict[str, Any]) -> dict[str, Any]:
    """Mirror async_discovery_message_received() in HA's mqtt/discovery.py.

    That code is an inline closure, so it can't be called; this repeats it step by
    step with HA's own abbreviation tables and origin schema. Raises vol.Invalid
    where HA would drop the message.
    """
    p = copy.deepcopy(payload)
    for key in list(p):
        p[ABBREVIATIONS.get(key, key)] = p.pop(key)

    if "device" in p:
        device = p["device"]
        if not isinstance(device, dict):
            raise vol.Invalid(f"device must be a JSON object, got {device!r}")
        for key in list(device):
            device[DEVICE_ABBREVIATIONS.get(key, key)] = device.pop(key)

    if "origin" in p and ORIGIN_ABBREVIATIONS is not None:
        origin = p["origin"]
        try:
            for key in list(origin):
                origin[ORIGIN_ABBREVIATIONS.get(key, key)] = origin.pop(key)
            ha_discovery.MQTT_ORIGIN_INFO_SCHEMA(origin)
        except Exception as err:  # HA: broad except, logs and ignores the message
            raise vol.Invalid(
                f"origin rejected by MQTT_ORIGIN_INFO_SCHEMA ({err}); HA drops the "
                "whole discovery message"
            ) from err

    if "availability" in p:
        for conf in cv.ensure_list(p["availability"]):
            if isinstance(conf, dict):
                for key in list(conf):
                    conf[ABBREVIATIONS.get(key, key)] = conf.pop(key)

    if TOPIC_BASE in p:
        base = p.pop(TOPIC_BASE)
        for key, value in p.items():
            if isinstance(value, str) and value and key.endswith("topic"):
                if value[0] == TOPIC_BASE:
                    p[key] = f"{base}{value[1:]}"
                if value[-1] == TOPIC_BASE:
                    p[key] = f"{value[:-1]}{base}"
        if p.get("availability"):
            for conf in cv.ensure_list(p["availability"]):
                if isinstance(conf, dict) and (topic := str(conf.get("topic"))):
                    if topic[0] == TOPIC_BASE:
                        conf["topic"] = f"{base}{topic[1:]}"
                    if topic[-1] == TOPIC_BASE:
                        conf["topic"] = f"{topic[:-1]}{base}"

    p[CONF_PLATFORM] = "mqtt"
    return p


def dropped_keys(before: Any, after: Any, path: str = "") -> list[str]:
    """Keys present in the input but gone from the validated config."""
    out: list[str] = []
    if isinstance(before, dict) and isinstance(after, dict):
        for key, value in before.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in after:
                if not (path == "" and key == CONF_PLATFORM):
                    out.append(where)
            else:
                out += dropped_keys(value, after[key], where)
    elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for i, (b, a) in enumerate(zip(before, after)):
            out += dropped_keys(b, a, f"{path}[{i}]")
    return out


def schema_keys(schema: Any) -> set[str] | None:
    """Top-level keys a DISCOVERY_SCHEMA (a vol.Schema, or vol.All(..., Schema)) knows."""
    if isinstance(schema, vol.Schema) and isinstance(schema.schema, dict):
        return {str(k.schema if isinstance(k, vol.Marker) else k) for k in schema.schema}
    if isinstance(schema, vol.All):
        keys: set[str] = set()
        found = False
        for validator in schema.validators:
            sub = schema_keys(validator)
            if sub is not None:
                keys |= sub
                found = True
        return keys if found else None
    return None


def unknown_key_error(key: str, component: str, known: set[str] | None) -> str:
    hint = ""
    if known:
        close = difflib.get_close_matches(key, sorted(known), n=1)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
    return f"key {key!r} is not in HA's {component} schema: HA silently drops it{hint}"


def check_message(
    index: int, msg: Any, prefix: str
) -> tuple[str, list[str], dict[str, Any] | None]:
    """Return (label, errors, expanded payload)."""
    if not isinstance(msg, dict) or not isinstance(msg.get("topic"), str):
        return f"#{index}", ['not an object with a string "topic"'], None
    topic = msg["topic"]
    payload = msg.get("payload")
    if not isinstance(payload, dict):
        return topic, ['"payload" is not a JSON object'], None

    if not topic.startswith(prefix + "/"):
        return topic, [f"topic does not start with the discovery prefix {prefix!r}/"], None
    match = ha_discovery.TOPIC_MATCHER.match(topic[len(prefix) + 1 :])
    if not match:
        return topic, ["topic does not match HA's discovery TOPIC_MATCHER"], None
    component = match.group("component")
    if component not in ha_discovery.SUPPORTED_COMPONENTS:
        return topic, [f"component {component!r} is not supported by HA MQTT discovery"], None

    try:
        expanded = expand(payload)
    except vol.Invalid as err:
        return topic, [str(err)], None

    errors: list[str] = []
    try:
        module = importlib.import_module(f"homeassistant.components.mqtt.{component}")
        schema = module.DISCOVERY_SCHEMA
    except (ImportError, AttributeError) as err:
        return topic, [f"cannot load HA's DISCOVERY_SCHEMA for {component}: {err}"], expanded

    capture = _Capture()
    ha_logger = logging.getLogger("homeassistant")
    ha_logger.addHandler(capture)
    try:
        validated = schema(copy.deepcopy(expanded))
    except vol.MultipleInvalid as err:
        errors += [humanize_error(expanded, e) for e in err.errors]
        validated = None
    except vol.Invalid as err:
        errors.append(humanize_error(expanded, err))
        validated = None
    finally:
        ha_logger.removeHandler(capture)
    errors += [f"HA logged a warning: {m}" for m in capture.records]

    # Unknown keys: from the schema's own key list (works even when validation
    # failed), and by diffing input and output (catches nested drops too).
    known = schema_keys(schema)
    unknown: list[str] = []
    if known is not None:
        unknown += [k for k in expanded if k != CONF_PLATFORM and k not in known]
    if validated is not None:
        unknown += [k for k in dropped_keys(expanded, validated) if k not in unknown]
    errors += [unknown_key_error(k, component, known) for k in unknown]

    # hearken's own requirements on top of HA's schema
    if not expanded.get("unique_id"):
        errors.append("missing unique_id")
    device = expanded.get("device")
    if not isinstance(device, dict) or not device.get("identifiers"):
        errors.append("missing device with identifiers")
    elif not device.get("name"):
        errors.append("device has no name (HA needs it in every entity's device info)")
    if "availability_topic" not in expanded and "availability" not in expanded:
        errors.append("missing availability (availability_topic or availability)")
    return topic, errors, expanded


def event_template_errors(label: str, config: dict[str, Any]) -> list[str]:
    """Renders an `event` entity's value_template with Home Assistant's own template
    engine on a hearken start and end message: the start must give a JSON object
    whose event_type is one of event_types; the end must render empty, which HA's
    MQTT event platform ignores (so one event fires one trigger)."""
    import asyncio
    import tempfile

    from homeassistant.core import HomeAssistant
    from homeassistant.helpers.template import Template

    tpl = config.get("value_template")
    if not isinstance(tpl, str):
        return []
    types = config.get("event_types") or []
    errors: list[str] = []

    async def render() -> None:
        hass = HomeAssistant(tempfile.mkdtemp(prefix="hearken-ha-"))
        t = Template(tpl, hass)
        for state in ("start", "end"):
            payload = json.dumps(
                {
                    "id": "0b6f3c9e-3f4e-4bd2-9a55-8f0f4d1c9a61",
                    "state": state,
                    "room": "kitchen",
                    "peak_score": 0.9,
                    "dbfs": -20.0,
                    "labels": [{"label_id": "/m/039jq", "label": "Glass", "probability": 0.9}],
                }
            )
            out = t.async_render_with_possible_json_value(payload, "")
            if state == "end":
                if str(out).strip():
                    errors.append(f"{label}: the end message renders {out!r}; HA would fire it as an event")
                continue
            try:
                obj = json.loads(out)
            except ValueError:
                errors.append(f"{label}: the start message renders {out!r}, not JSON")
                continue
            if obj.get("event_type") not in types:
                errors.append(f"{label}: event_type {obj.get('event_type')!r} is not in {types}")
        await hass.async_stop(force=True)

    asyncio.run(render())
    return errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", help="JSON array of {topic, payload} discovery messages")
    ap.add_argument("--prefix", default="homeassistant", help="discovery prefix")
    args = ap.parse_args()

    logging.basicConfig(level=logging.ERROR)  # keep HA's own logging quiet
    try:
        with open(args.file, encoding="utf-8") as f:
            messages = json.load(f)
    except (OSError, ValueError) as err:
        print(f"error: cannot read {args.file}: {err}", file=sys.stderr)
        return 2
    if not isinstance(messages, list) or not messages:
        print(f"error: {args.file} must hold a non-empty JSON array", file=sys.stderr)
        return 2

    failed = 0
    seen_ids: dict[str, str] = {}
    seen_topics: set[str] = set()
    for i, msg in enumerate(messages):
        label, errors, expanded = check_message(i, msg, args.prefix)
        if label in seen_topics:
            errors.append("topic used by an earlier message too")
        seen_topics.add(label)
        uid = (expanded or {}).get("unique_id")
        if isinstance(uid, str) and uid:
            if uid in seen_ids:
                errors.append(f"unique_id {uid!r} also used by {seen_ids[uid]}")
            else:
                seen_ids[uid] = label
        if expanded and "/event/" in label:
            errors.extend(event_template_errors(label, expanded))
        if errors:
            failed += 1
            print(f"FAIL {label}")
            for e in errors:
                print(f"     - {e}")
        else:
            print(f"OK   {label}")

    n = len(messages)
    if failed:
        print(f"{failed} of {n} configs failed Home Assistant {HA_VERSION} schema checks")
        return 1
    print(f"{n} configs checked against Home Assistant {HA_VERSION} schemas: all valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
