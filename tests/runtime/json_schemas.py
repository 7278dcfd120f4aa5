"""Fifty-odd JSON schemas of varied shape for constrained decoding: (name, schema) pairs.

Every schema is `strict` style (objects close with additionalProperties false and list their required
keys) and bounded (maxItems, maxLength, enums), so a walk that always takes an allowed token ends.
Shared by tests/runtime/test_grammar.py and bench/grammar_engines.py.
"""

from __future__ import annotations


def obj(properties: dict, required: list[str] | None = None) -> dict:
    """A closed object; every property required unless `required` says otherwise."""
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required, "additionalProperties": False}


def text(max_length: int = 12, **extra) -> dict:
    return {"type": "string", "maxLength": max_length, **extra}


def array(items: dict, max_items: int = 3, min_items: int = 0, **extra) -> dict:
    return {"type": "array", "items": items, "minItems": min_items, "maxItems": max_items, **extra}


INT = {"type": "integer", "minimum": -1000, "maximum": 1000}
NUM = {"type": "number", "minimum": -100, "maximum": 100}
BOOL = {"type": "boolean"}

SCHEMAS: list[tuple[str, dict]] = [
    # flat objects of one kind of value
    ("person", obj({"name": text(), "age": {"type": "integer", "minimum": 0, "maximum": 130}})),
    ("point2d", obj({"x": NUM, "y": NUM})),
    ("point3d", obj({"x": INT, "y": INT, "z": INT})),
    ("flags", obj({"active": BOOL, "verified": BOOL, "admin": BOOL})),
    ("single_string", obj({"answer": text(20)})),
    ("single_int", obj({"count": {"type": "integer", "minimum": 1, "maximum": 9}})),
    ("single_bool", obj({"ok": BOOL})),
    ("null_field", obj({"value": {"type": "null"}})),
    ("nullable_string", obj({"nickname": {"type": ["string", "null"], "maxLength": 10}})),
    ("exclusive_bounds", obj({"ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}})),
    ("small_int_range", obj({"dice": {"type": "integer", "minimum": 1, "maximum": 6}})),
    ("negative_ints", obj({"depth": {"type": "integer", "minimum": -500, "maximum": -1}})),
    # enums and consts
    ("color_enum", obj({"color": {"enum": ["red", "green", "blue"]}})),
    ("sentiment", obj({"label": {"enum": ["positive", "negative", "neutral"]},
                       "score": {"type": "number", "minimum": 0, "maximum": 1}})),
    ("mixed_enum", obj({"v": {"enum": [1, "two", True, None]}})),
    ("const_version", obj({"version": {"const": "1.0"}, "data": text()})),
    ("const_int", obj({"kind": {"const": 7}, "ok": BOOL})),
    ("priority", obj({"task": text(), "priority": {"enum": ["low", "medium", "high"]}, "done": BOOL})),
    ("http_method", obj({"method": {"enum": ["GET", "POST", "PUT", "DELETE"]}, "path": text(16)})),
    # optional fields
    ("optional_email", obj({"name": text(), "email": text(20)}, required=["name"])),
    ("all_optional", obj({"a": INT, "b": text(5)}, required=[])),
    ("optional_nested", obj({"id": INT, "meta": obj({"tag": text(6)})}, required=["id"])),
    ("profile", obj({"user": text(), "bio": text(20), "age": INT, "public": BOOL}, required=["user", "public"])),
    # arrays
    ("string_list", obj({"tags": array(text(8), 4)})),
    ("int_list", obj({"values": array(INT, 5, 1)})),
    ("fixed_pair", obj({"pair": array(INT, 2, 2)})),
    ("bool_list", obj({"bits": array(BOOL, 4, 2)})),
    ("enum_list", obj({"days": array({"enum": ["mon", "tue", "wed"]}, 3, 1)})),
    ("matrix", obj({"rows": array(array(INT, 3, 1), 3, 1)})),
    ("object_list", obj({"items": array(obj({"sku": text(6), "qty": {"type": "integer", "minimum": 1, "maximum": 99}}), 3)})),
    ("unique_list", obj({"ids": array({"type": "integer", "minimum": 0, "maximum": 9}, 3, uniqueItems=True)})),
    ("top_level_array", array(obj({"k": text(4)}), 2, 1)),
    ("prefix_items_tuple", obj({"entry": {"type": "array", "prefixItems": [text(6), INT], "items": False,
                                          "minItems": 2, "maxItems": 2}})),
    # nesting
    ("address", obj({"name": text(), "address": obj({"street": text(16), "city": text(),
                                                     "zip": text(5, pattern="^[0-9]{5}$")})})),
    ("order", obj({"order_id": INT, "customer": obj({"name": text(), "vip": BOOL}),
                   "lines": array(obj({"product": text(8), "price": NUM}), 2, 1)})),
    ("deep_nest", obj({"a": obj({"b": obj({"c": obj({"d": INT})})})})),
    ("config", obj({"server": obj({"host": text(15), "port": {"type": "integer", "minimum": 1, "maximum": 65535}}),
                    "debug": BOOL, "workers": {"type": "integer", "minimum": 1, "maximum": 16}})),
    ("event", obj({"title": text(), "attendees": array(obj({"name": text(8), "rsvp": {"enum": ["yes", "no"]}}), 2),
                   "location": obj({"room": text(6), "floor": {"type": "integer", "minimum": 0, "maximum": 50}})})),
    ("tree_two_levels", obj({"label": text(6), "children": array(obj({"label": text(6),
                                                                      "children": array(obj({"label": text(6)}), 2)}), 2)})),
    # anyOf / oneOf
    ("any_of_scalar", obj({"value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 10}, text(6)]}})),
    ("any_of_objects", obj({"shape": {"anyOf": [obj({"kind": {"const": "circle"}, "r": NUM}),
                                                 obj({"kind": {"const": "square"}, "side": NUM})]}})),
    ("one_of_null", obj({"parent": {"oneOf": [{"type": "null"}, INT]}})),
    ("any_of_list_or_string", obj({"names": {"anyOf": [text(8), array(text(8), 2, 1)]}})),
    ("tool_call_like", obj({"name": {"enum": ["get_weather", "search"]},
                            "arguments": {"anyOf": [obj({"city": text(10), "unit": {"enum": ["c", "f"]}}),
                                                    obj({"query": text(16)})]}})),
    # strings with pattern / format
    ("pattern_code", obj({"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}})),
    ("pattern_hex", obj({"color": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}})),
    ("min_length", obj({"word": {"type": "string", "minLength": 3, "maxLength": 8}})),
    ("format_date", obj({"day": {"type": "string", "format": "date"}})),
    ("format_email", obj({"contact": {"type": "string", "format": "email", "maxLength": 30}})),
    ("format_uuid", obj({"id": {"type": "string", "format": "uuid"}})),
    # $defs / $ref and mixed records
    ("defs_ref", {"$defs": {"pt": obj({"x": INT, "y": INT})}, **obj({"start": {"$ref": "#/$defs/pt"},
                                                                    "end": {"$ref": "#/$defs/pt"}})}),
    ("classification", obj({"category": {"enum": ["spam", "ham"]}, "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                            "reasons": array(text(12), 2)})),
    ("extraction", obj({"entities": array(obj({"text": text(10), "type": {"enum": ["PER", "ORG", "LOC"]}}), 3),
                        "language": {"enum": ["en", "fr", "de"]}})),
    ("weather_report", obj({"city": text(), "temp_c": {"type": "number", "minimum": -60, "maximum": 60},
                            "conditions": {"enum": ["sunny", "cloudy", "rain", "snow"]}, "alerts": array(text(10), 2)})),
    ("book", obj({"title": text(20), "author": text(), "year": {"type": "integer", "minimum": 1450, "maximum": 2030},
                  "isbn": {"type": ["string", "null"], "maxLength": 13}, "genres": array(text(8), 2)})),
    ("integer_multiple", obj({"step": {"type": "integer", "minimum": 0, "maximum": 100, "multipleOf": 5}})),
    ("empty_object", obj({})),
]
