"""yurt.image.metadata: hostile JSON in an image is one ImageError naming the document and field."""

from __future__ import annotations

import json

import pytest

from yurt.errors import ImageError
from yurt.image import metadata

WHAT = "IMG: /.singularity.d/oci-config.json"


@pytest.mark.parametrize("raw, message", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),  # not UTF-8
    (b'{"a": "b"}\x00', "not valid JSON"),  # a raw NUL byte
    (b"[" * 100000 + b"]" * 100000, "JSON nested too deeply"),
    (b'{"a":' * 50000 + b"1" + b"}" * 50000, "JSON nested too deeply"),
])
def test_parse_failures_are_one_image_error(raw, message):
    with pytest.raises(ImageError, match=message) as info:
        metadata.parse(raw, WHAT)
    assert str(info.value).startswith(WHAT + ": ")
    assert "\n" not in str(info.value)


def test_parse_object_wants_an_object():
    assert metadata.parse_object(b'{"a": 1}', WHAT) == {"a": 1}
    with pytest.raises(ImageError, match=r"not a JSON object \(found an array\)"):
        metadata.parse_object(b"[1, 2]", WHAT)
    with pytest.raises(ImageError, match=r"not a JSON object \(found null\)"):
        metadata.parse_object(b"null", WHAT)


@pytest.mark.parametrize("config, message", [
    ({"Env": "PATH=/bin"}, "Env must be an array of strings, not a string"),
    ({"Env": ["A=1", 2]}, r"Env\[1\] must be a string, not a number"),
    ({"Env": ["A=b\u0000c"]}, r"Env\[0\] contains a NUL character"),
    ({"Cmd": {"a": 1}}, "Cmd must be an array of strings, not an object"),
    ({"Cmd": "bash"}, "Cmd must be an array of strings, not a string"),
    ({"Entrypoint": [["nested"]]}, r"Entrypoint\[0\] must be a string, not an array"),
    ({"WorkingDir": 5}, "WorkingDir must be a string, not a number"),
    ({"WorkingDir": "/a\u0000"}, "WorkingDir contains a NUL character"),
    ({"User": True}, "User must be a string, not a boolean"),
    ({"Labels": ["a", "b"]}, "Labels must be an object of strings, not an array"),
    ({"Labels": {"a": 1}}, r"Labels\['a'\] must be a string, not a number"),
    ({"Volumes": ["/data"]}, "Volumes must be an object, not an array"),
])
def test_oci_config_type_confusion(config, message):
    with pytest.raises(ImageError, match=message) as info:
        metadata.oci_config(config, WHAT)
    assert str(info.value).startswith(WHAT + ": ")
    with pytest.raises(ImageError, match=message):  # the same inside a whole image config
        metadata.oci_config({"architecture": "amd64", "config": config}, WHAT)


def test_oci_config_good_and_null_members():
    config = {"Env": ["A=1"], "Cmd": None, "Entrypoint": ["/e"], "WorkingDir": "/w", "Labels": {"k": "v"},
              "ExposedPorts": {"80/tcp": {}}, "Healthcheck": {"Test": ["NONE"]}, "Unknown": [1, {"x": 2}]}
    assert metadata.oci_config(config, WHAT) is config
    assert metadata.oci_config({"config": config}, WHAT) is config
    assert metadata.oci_config({"config": None}, WHAT) == {}
    with pytest.raises(ImageError, match=r"its 'config' member is not a JSON object \(found a string\)"):
        metadata.oci_config({"config": "x"}, WHAT)
    with pytest.raises(ImageError, match=r"not a JSON object \(found an array\)"):
        metadata.oci_config([config], WHAT)


def test_labels_values_that_are_not_strings_are_shown_as_json():
    raw = json.dumps({"a": "b", "n": 1, "o": {"x": [1]}}).encode()
    assert metadata.labels(raw, "labels.json") == {"a": "b", "n": "1", "o": '{"x": [1]}'}
    with pytest.raises(ImageError, match=r"labels.json: not a JSON object \(found an array\)"):
        metadata.labels(b'["a"]', "labels.json")


def test_string_map():
    assert metadata.string_map({"a": "b"}, "x") == {"a": "b"}
    with pytest.raises(ImageError, match=r"x\['a'\] contains a NUL character"):
        metadata.string_map({"a": "\u0000"}, "x")
