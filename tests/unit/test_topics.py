"""Topic filter validation and matching."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unsflow.engine.topics import TopicMatcher, filter_problem, matches, split_shared, topic_problem


@pytest.mark.parametrize("flt", ["a/b", "#", "+", "a/+/c", "a/#", "+/+/#", "$share/g/a/+", "/", "a//b"])
def test_valid_filters(flt):
    assert filter_problem(flt) is None


@pytest.mark.parametrize("flt, needle", [
    ("a/#/b", "'#' only"),
    ("a/b#", "'#' only"),
    ("+foo", "'+' only"),
    ("a/b+/c", "'+' only"),
    ("", "non-empty"),
    ("a/\x00", "NUL"),
    ("$share//a", "non-empty GROUP"),
    ("$share/g+/a", "without '+'"),
    ("$share/g/", "topic filter after"),
])
def test_invalid_filters(flt, needle):
    problem = filter_problem(flt)
    assert problem is not None and needle in problem


@pytest.mark.parametrize("flt, topic, expected", [
    ("com1/plant1/area1/+/Message1", "com1/plant1/area1/line4/Message1", True),
    ("com1/plant1/area1/+/Message1", "com1/plant1/area2/line4/Message1", False),
    ("com1/plant1/area1/+/Message1", "com1/plant1/area1/line4/x/Message1", False),
    ("a/#", "a", True),
    ("a/#", "a/b/c", True),
    ("a/+", "a", False),
    ("a/+", "a/", True),
    ("#", "$SYS/uptime", False),
    ("+/uptime", "$SYS/uptime", False),
    ("$SYS/#", "$SYS/uptime", True),
    ("$share/grp/a/+", "a/b", True),
])
def test_matches(flt, topic, expected):
    assert matches(flt, topic) is expected


def test_topic_names():
    assert topic_problem("a/b") is None
    assert "wildcards" in topic_problem("a/+")
    assert "non-empty" in topic_problem("")


def test_split_shared():
    assert split_shared("$share/g/a/b") == ("g", "a/b")
    assert split_shared("a/b") == (None, "a/b")


def test_matcher_gives_each_target_once_in_order():
    m = TopicMatcher({"a/#": ["lake"], "a/+/c": ["lake", "kafka"], "x/#": ["other"]})
    assert m("a/b/c") == ("lake", "kafka")
    assert m("a/q") == ("lake",)
    assert m("z") == ()


level = st.text(alphabet=st.characters(blacklist_characters="/+#\x00", blacklist_categories=("Cs",)),
                max_size=5)


@given(st.lists(level, min_size=1, max_size=6))
def test_a_topic_matches_itself_hash_and_plus_pattern(levels):
    topic = "/".join(levels)
    if topic.startswith("$"):
        return
    assert matches(topic, topic)
    assert matches("#", topic)
    assert matches("/".join("+" for _ in levels), topic)
    assert filter_problem(topic) is None or topic == ""


@given(st.text(max_size=30))
def test_filter_problem_never_raises(text):
    result = filter_problem(text)
    assert result is None or isinstance(result, str)


def test_every_target_that_names_a_topic_checks_its_template_at_load():
    from pydantic import ValidationError

    from unsflow.targets.kafka import KafkaTargetConfig
    from unsflow.targets.mqtt import MqttTargetConfig

    for cls, base in ((MqttTargetConfig, {"type": "mqtt"}),
                      (KafkaTargetConfig, {"type": "kafka", "bootstrap-servers": "k:9092"})):
        with pytest.raises(ValidationError, match=r"unknown field\(s\) \['machine'\]"):
            cls.model_validate({**base, "topic": "alerts/{machine}"})
        with pytest.raises(ValidationError, match="template 'alerts/{record'"):
            cls.model_validate({**base, "topic": "alerts/{record"})

