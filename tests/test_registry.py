import pytest

from xraygpt import components, registry


def test_duplicate_name_raises():
    components.register_all()
    with pytest.raises(registry.RegistryError, match="duplicate model name 'xraygpt'"):
        registry.register("model", "xraygpt")(object)


def test_unknown_name_lists_known_and_closest():
    components.register_all()
    with pytest.raises(registry.RegistryError) as err:
        registry.get("dataset", "mimc")
    msg = str(err.value)
    assert "did you mean 'mimic'" in msg and "openi" in msg and "\n" not in msg


def test_unknown_kind():
    with pytest.raises(registry.RegistryError, match="unknown registry kind"):
        registry.register("optimizer_typo", "x")


def test_every_kind_has_entries():
    components.register_all()
    for kind in registry.KINDS:
        assert registry.names(kind), kind


def test_no_star_imports_in_library(repo):
    for path in (repo / "xraygpt").rglob("*.py"):
        assert "import *" not in path.read_text(), path
