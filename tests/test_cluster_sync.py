"""synchronous_standby_names and its metadata (cluster/sync.py), the settings that drive it,
and their place in custom.conf. No PostgreSQL here: tests/test_cluster_slots.py checks that
PostgreSQL makes commits wait on what these functions render."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from instance_manager import settings
from instance_manager.cluster import sync
from instance_manager.cluster_model import Spec
from instance_manager.errors import SettingsError
from instance_manager.postgres import config

THREE = ["one", "two", "three"]


def spec(instances: int = 3, **synchronous: Any) -> Spec:
    """A Spec whose spec.postgresql.synchronous is ``synchronous`` (none when empty)."""
    document: dict[str, Any] = {"instances": instances}
    if synchronous:
        document["postgresql"] = {"synchronous": synchronous}
    return msgspec.convert(document, Spec)


def legacy(minimum: int, maximum: int, instances: int = 4) -> Spec:
    return msgspec.convert(
        {"instances": instances, "minSyncReplicas": minimum, "maxSyncReplicas": maximum}, Spec
    )


def names(s: Spec, healthy: list[str], instances: list[str] = THREE, primary: str = "one") -> str:
    return sync.synchronous_standby_names("example", instances, primary, healthy, s)


# --- dataDurability: required (the default) -------------------------------------------------


def test_required_any_names_healthy_standbys_then_the_primary() -> None:
    assert names(spec(method="any", number=2), THREE) == 'ANY 2 ("three","two","one")'


def test_required_first_keeps_the_same_order() -> None:
    assert names(spec(method="first", number=2), THREE) == 'FIRST 2 ("three","two","one")'


def test_required_is_the_default_durability() -> None:
    explicit = spec(method="any", number=1, dataDurability="required")
    assert names(spec(method="any", number=1), ["one"]) == names(explicit, ["one"])


def test_required_lists_instances_that_are_not_healthy_after_the_healthy_ones() -> None:
    s = spec(method="first", number=2)
    assert names(s, ["one", "three"]) == 'FIRST 2 ("three","two","one")'
    instances = ["a-1", "a-2", "a-3", "a-4"]
    got = sync.synchronous_standby_names("a", instances, "a-2", ["a-2", "a-4"], s)
    assert got == 'FIRST 2 ("a-4","a-1","a-3","a-2")'


def test_required_keeps_every_name_with_no_healthy_standby_so_commits_wait() -> None:
    assert names(spec(method="any", number=1), []) == 'ANY 1 ("three","two","one")'


def test_required_caps_the_names_from_the_cluster() -> None:
    s = spec(method="first", number=2, maxStandbyNamesFromCluster=1)
    assert names(s, THREE) == 'FIRST 2 ("three")'


def test_required_puts_pre_and_post_names_around_the_cluster_ones() -> None:
    s = spec(
        method="first",
        number=2,
        maxStandbyNamesFromCluster=1,
        standbyNamesPre=["prefix", "here"],
        standbyNamesPost=["suffix", "there"],
    )
    assert names(s, THREE) == 'FIRST 2 ("prefix","here","three","suffix","there")'


def test_required_with_an_empty_list_names_a_placeholder() -> None:
    s = spec(method="first", number=2, maxStandbyNamesFromCluster=1)
    assert sync.synchronous_standby_names("example", [], "", [], s) == (
        'FIRST 2 ("example-placeholder")'
    )
    capped = spec(method="any", number=1, maxStandbyNamesFromCluster=0)
    assert names(capped, THREE) == 'ANY 1 ("example-placeholder")'


def test_names_are_double_quoted_with_quotes_doubled() -> None:
    s = spec(method="any", number=1, standbyNamesPre=['we"ird', "x,y (z)"])
    got = sync.synchronous_standby_names("c", ["p"], "p", ["p"], s)
    assert got == 'ANY 1 ("we""ird","x,y (z)","p")'


# --- dataDurability: preferred --------------------------------------------------------------


def test_preferred_names_only_healthy_standbys() -> None:
    s = spec(method="any", number=2, dataDurability="preferred")
    assert names(s, THREE) == 'ANY 2 ("three","two")'


def test_preferred_caps_the_number_to_the_healthy_standbys() -> None:
    s = spec(method="first", number=2, dataDurability="preferred")
    assert names(s, ["one", "two"]) == 'FIRST 1 ("two")'


def test_preferred_caps_names_then_the_number() -> None:
    s = spec(method="any", number=2, dataDurability="preferred", maxStandbyNamesFromCluster=1)
    assert names(s, THREE) == 'ANY 1 ("three")'


def test_preferred_without_a_healthy_standby_turns_synchronous_replication_off() -> None:
    s = spec(method="any", number=1, dataDurability="preferred")
    assert names(s, ["one"]) == ""
    assert sync.sync_parameters("example", THREE, "one", ["one"], s) == {}
    capped = spec(method="any", number=1, dataDurability="preferred", maxStandbyNamesFromCluster=0)
    assert names(capped, THREE) == ""


# --- legacy minSyncReplicas / maxSyncReplicas -----------------------------------------------


@pytest.mark.parametrize(
    ("minimum", "maximum", "healthy", "expected"),
    [
        (0, 0, ["p", "a", "b"], ""),  # not asked for
        (1, 2, ["p", "a", "b", "c"], 'ANY 2 ("a","b","c")'),  # enough standbys: the maximum
        (1, 3, ["p", "a", "b"], 'ANY 1 ("a","b")'),  # fewer than the maximum: the minimum
        (2, 3, ["p", "a"], 'ANY 1 ("a")'),  # fewer than the minimum: what there is
        (1, 2, ["p"], ""),  # no healthy standby: nothing to wait for
        (1, 2, [], ""),  # no healthy instance at all
        (2, 2, ["a", "b", "c"], 'ANY 2 ("a","b","c")'),  # the primary not among the healthy
    ],
)
def test_legacy_min_max(minimum: int, maximum: int, healthy: list[str], expected: str) -> None:
    instances = ["p", "a", "b", "c"]
    got = sync.synchronous_standby_names("x", instances, "p", healthy, legacy(minimum, maximum))
    assert got == expected


def test_explicit_configuration_wins_over_legacy() -> None:
    s = msgspec.convert(
        {
            "instances": 3,
            "minSyncReplicas": 1,
            "maxSyncReplicas": 2,
            "postgresql": {"synchronous": {"method": "first", "number": 1}},
        },
        Spec,
    )
    assert names(s, THREE) == 'FIRST 1 ("three","two","one")'


# --- metadata and rendering -----------------------------------------------------------------


def test_metadata_is_cnpg_json() -> None:
    standbys = sync.sync_standbys("example", THREE, "one", THREE, spec(method="any", number=2))
    assert standbys.metadata() == (
        '{"method":"ANY","number":2,"standbyNames":["three","two","one"]}'
    )
    params = standbys.parameters()
    assert params == {
        "synchronous_standby_names": 'ANY 2 ("three","two","one")',
        "cnpg.synchronous_standby_names_metadata": standbys.metadata(),
    }


def test_metadata_escapes_like_go() -> None:
    s = spec(method="any", number=1, standbyNamesPost=['a<b>&"c\u2028é'])
    metadata = sync.sync_standbys("c", ["p"], "p", ["p"], s).metadata()
    assert '"a\\u003cb\\u003e\\u0026\\"c\\u2028é"' in metadata
    assert json.loads(metadata)["standbyNames"] == ["p", 'a<b>&"c\u2028é']


def make_settings(root: Path) -> settings.Settings:
    return settings.load(None, {}, {"pgData": str(root / "pgdata"), "scratchDir": str(root)})


def test_custom_conf_renders_managed_parameters_outside_the_hash(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    managed = sync.sync_parameters("c", ["a", "b"], "a", ["a", "b"], spec(method="any", number=1))
    plain = config.render_custom_conf(s)
    rendered = config.render_custom_conf(s, managed=managed)
    lines = rendered.custom_conf.splitlines()
    assert lines[-1] == f"cnpg.config_sha256 = '{rendered.sha256}'"
    assert lines[-2].startswith('cnpg.synchronous_standby_names_metadata = \'{"method":"ANY"')
    assert 'synchronous_standby_names = \'ANY 1 ("b","a")\'' in lines
    regular = "".join(line + "\n" for line in lines[1:-2])
    assert rendered.sha256 == hashlib.sha256(regular.encode()).hexdigest()
    assert rendered.sha256 != plain.sha256
    assert "synchronous_standby_names" not in plain.custom_conf


def test_a_user_cannot_set_synchronous_standby_names(tmp_path: Path) -> None:
    document = {"spec": {"postgresql": {"parameters": {"synchronous_standby_names": "*"}}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    s = settings.load(path, {}, {"pgData": str(tmp_path / "pgdata"), "scratchDir": str(tmp_path)})
    rendered = config.render_custom_conf(s)
    assert "synchronous_standby_names" in rendered.ignored
    assert "synchronous_standby_names" not in rendered.custom_conf


# --- settings -------------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    s = make_settings(tmp_path).cluster.spec
    slots = s.replicationSlots
    assert slots.highAvailability.enabled is True
    assert slots.highAvailability.slotPrefix == "_cnpg_"
    assert slots.updateInterval == 30
    assert slots.synchronizeReplicas.enabled is True
    assert slots.synchronizeReplicas.excludePatterns == []
    assert s.postgresql.synchronous is None


def test_an_empty_slot_prefix_means_the_default() -> None:
    s = spec()
    empty = msgspec.convert({"replicationSlots": {"highAvailability": {"slotPrefix": ""}}}, Spec)
    assert empty.replicationSlots.highAvailability.slotPrefix == "_cnpg_"
    assert s.replicationSlots == Spec().replicationSlots


def sync_spec(**fields: Any) -> dict[str, Any]:
    return {"spec": {"instances": 3, "postgresql": {"synchronous": fields}}}


@pytest.mark.parametrize(
    ("document", "field", "detail"),
    [
        (
            {"spec": {"replicationSlots": {"updateInterval": 0}}},
            "spec.replicationSlots.updateInterval",
            ">= 1",
        ),
        (
            {"spec": {"replicationSlots": {"highAvailability": {"slotPrefix": "Bad-"}}}},
            "spec.replicationSlots.highAvailability.slotPrefix",
            "lower-case",
        ),
        (
            {"spec": {"replicationSlots": {"synchronizeReplicas": {"excludePatterns": ["("]}}}},
            "spec.replicationSlots.synchronizeReplicas.excludePatterns[0]",
            "'('",
        ),
        (
            {"spec": {"replicationSlots": {"highAvailability": {"enabled": "yes"}}}},
            "spec.replicationSlots.highAvailability.enabled",
            "bool",
        ),
        (sync_spec(method="all", number=1), "spec.postgresql.synchronous.method", "all"),
        (sync_spec(number=1), "spec.postgresql.synchronous", "method"),
        (sync_spec(method="any", number=0), "spec.postgresql.synchronous.number", ">= 1"),
        (
            sync_spec(method="any", number=3),
            "spec.postgresql.synchronous.number",
            "less than the number of instances",
        ),
        (
            sync_spec(method="any", number=1, dataDurability="maybe"),
            "spec.postgresql.synchronous.dataDurability",
            "maybe",
        ),
        (
            sync_spec(method="any", number=1, dataDurability="preferred", standbyNamesPost=["x"]),
            "spec.postgresql.synchronous.dataDurability",
            "requires empty standbyNamesPre and standbyNamesPost",
        ),
        (
            sync_spec(method="any", number=1, standbyNamesPre=["a\nb"]),
            "spec.postgresql.synchronous.standbyNamesPre[0]",
            "line break",
        ),
        (
            sync_spec(method="any", number=1, maxStandbyNamesFromCluster=-1),
            "spec.postgresql.synchronous.maxStandbyNamesFromCluster",
            ">= 0",
        ),
        ({"spec": {"instances": 2, "maxSyncReplicas": 2}}, "spec.maxSyncReplicas", "lower"),
        (
            {"spec": {"instances": 3, "minSyncReplicas": 2, "maxSyncReplicas": 1}},
            "spec.minSyncReplicas",
            "greater than maxSyncReplicas",
        ),
        ({"spec": {"minSyncReplicas": -1}}, "spec.minSyncReplicas", ">= 0"),
    ],
)
def test_invalid_settings_name_the_field(
    tmp_path: Path, document: dict[str, Any], field: str, detail: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(SettingsError) as info:
        settings.load(path, {}, {"pgData": str(tmp_path / "pgdata")})
    message = str(info.value)
    assert message.startswith(f"invalid settings: {field}: "), message
    assert detail in message, message
    assert info.value.exit_code == 2


def test_write_all_writes_the_managed_parameters(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    s.pgdata.mkdir()
    (s.pgdata / "postgresql.conf").write_text("# initdb\n")
    managed = sync.sync_parameters("c", ["a", "b"], "a", ["a"], spec(method="first", number=1))
    rendered, changed = config.write_all(s, managed=managed)
    written = (s.pgdata / config.CUSTOM_CONF).read_text()
    assert changed and written == rendered.custom_conf
    assert 'synchronous_standby_names = \'FIRST 1 ("b","a")\'\n' in written
    _, changed = config.write_all(s, managed=managed)
    assert not changed
    _, changed = config.write_all(s)  # a standby, or synchronous replication turned off
    assert changed and "synchronous_standby_names" not in (s.pgdata / "custom.conf").read_text()
