"""Plugin discovery through real entry points, failure isolation, name resolution."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from sciddpm.config import ConfigError, load_run
from sciddpm.registry import (
    AmbiguousNameError,
    NameClashError,
    PluginError,
    PluginLoadError,
    Registry,
    UnknownComponentError,
)

# A lab plugin: hooks in a light module, the component in a module that must
# not be imported until the component is built.
HOOKS = """
from sciddpm.hooks import Component, hookimpl

@hookimpl
def sciddpm_components():
    return [
        Component("encoder", "scale", "labplug_impl:Scale", "labplug_impl:ScaleConfig",
                  "Multiply by a constant"),
        Component("denoiser", "unet", "labplug_impl:Scale", "labplug_impl:ScaleConfig",
                  "A clashing short name"),
    ]
"""
IMPL = """
from pydantic import BaseModel, ConfigDict
from sciddpm.interfaces import Encoder

class ScaleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    factor: float = 2.0

class Scale(Encoder):
    def __init__(self, config):
        self.factor = config.factor
    def encode(self, x):
        return x * self.factor
    def decode(self, z):
        return z / self.factor
"""


@pytest.fixture
def labplug(make_dist):
    return make_dist(
        "labplug", {"lab": "labplug_hooks"}, {"labplug_hooks.py": HOOKS, "labplug_impl.py": IMPL}
    )


def test_builtin_plugin_registers_every_core_kind():
    registry = Registry.load()
    builtins = [e for e in registry.entries() if e.plugin == "sciddpm"]
    assert {e.kind for e in builtins} >= {"encoder", "denoiser", "conditioner", "scheduler", "data", "metric"}
    assert "sciddpm/unet" in registry.names("denoiser")


def test_third_party_plugin_is_discovered_and_built_lazily(labplug):
    registry = Registry.load()
    entry = registry.get("encoder", "scale")
    assert entry.full_name == "lab/scale"
    assert (entry.distribution, entry.version) == ("labplug", "0.1.0")
    assert "labplug_impl" not in sys.modules  # listing did not import the component
    encoder = registry.build("encoder", {"type": "lab/scale", "factor": 4.0})
    assert "labplug_impl" in sys.modules
    assert encoder.encode(3.0) == 12.0


def test_listing_imports_no_component_module_nor_torch():
    code = (
        "import sys\n"
        "from sciddpm.registry import get_registry\n"
        "r = get_registry(); assert r.entries()\n"
        "heavy = [m for m in sys.modules if m == 'torch' or m.startswith(('sciddpm.nn', 'sciddpm.diffusion',"
        " 'sciddpm.components', 'sciddpm.data', 'sciddpm.pipeline', 'sciddpm.training'))]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_short_name_ambiguity_lists_candidates_and_full_name_resolves(labplug):
    registry = Registry.load()
    with pytest.raises(AmbiguousNameError, match=r"lab/unet, sciddpm/unet"):
        registry.get("denoiser", "unet")
    assert registry.get("denoiser", "sciddpm/unet").plugin == "sciddpm"


def test_plugin_that_fails_to_import_is_recorded_and_others_work(make_dist, labplug):
    make_dist("brokenplug", {"broken": "brokenplug_hooks"}, {"brokenplug_hooks.py": "import not_a_module\n"})
    registry = Registry.load()
    assert registry.get("encoder", "scale")  # the good plugin still loads
    [failure] = registry.failures
    assert failure.plugin == "broken"
    assert (failure.distribution, failure.version) == ("brokenplug", "0.1.0")
    assert "ModuleNotFoundError" in failure.error and "not_a_module" in failure.error


def test_strict_mode_turns_a_failure_into_an_error(make_dist, monkeypatch):
    make_dist(
        "brokenplug", {"broken": "brokenplug_hooks"}, {"brokenplug_hooks.py": "raise ImportError('boom')\n"}
    )
    monkeypatch.setenv("SCIDDPM_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match=r"broken.*boom"):
        Registry.load()


def test_misspelled_hook_is_recorded_with_a_suggestion(make_dist):
    source = HOOKS.replace("def sciddpm_components", "def sciddpm_component")
    make_dist("typoplug", {"typo": "typoplug_hooks"}, {"typoplug_hooks.py": source})
    registry = Registry.load()
    [failure] = registry.failures
    assert failure.plugin == "typo"
    assert "'sciddpm_component'" in failure.error and "did you mean 'sciddpm_components'" in failure.error


def test_hook_that_raises_or_returns_junk_is_recorded(make_dist):
    hook = "from sciddpm.hooks import hookimpl\n@hookimpl\ndef sciddpm_components():\n    "
    raising = hook + "raise RuntimeError('bad')\n"
    junk = hook + "return ['unet']\n"
    make_dist("raiseplug", {"raiser": "raiseplug_hooks"}, {"raiseplug_hooks.py": raising})
    make_dist("junkplug", {"junk": "junkplug_hooks"}, {"junkplug_hooks.py": junk})
    registry = Registry.load()
    errors = {f.plugin: f.error for f in registry.failures}
    assert "RuntimeError: bad" in errors["raiser"]
    assert "not a sciddpm.hooks.Component" in errors["junk"]
    assert registry.get("denoiser", "unet").plugin == "sciddpm"


def test_wrong_api_version_and_missing_requirement_are_recorded(make_dist):
    source = """
from sciddpm.hooks import Component, hookimpl
@hookimpl
def sciddpm_components():
    return [Component("encoder", "old", "x:y", "x:z", api_version=99),
            Component("encoder", "needy", "x:y", "x:z", requires=["no-such-dist>=1"])]
"""
    make_dist("oldplug", {"old": "oldplug_hooks"}, {"oldplug_hooks.py": source})
    errors = [f.error for f in Registry.load().failures]
    assert any("API 99" in e and "API 2" in e for e in errors)
    assert any("'no-such-dist>=1'" in e and "pip install no-such-dist" in e for e in errors)


def test_api_1_records_are_kept_where_the_contract_did_not_change(make_dist):
    # API 2 changed the Scheduler contract only: an API 1 encoder loads, an API 1 scheduler is
    # refused with a message that names both versions and what changed.
    source = """
from sciddpm.hooks import Component, hookimpl
@hookimpl
def sciddpm_components():
    return [Component("encoder", "v1enc", "sciddpm.components.encoders:Identity",
                      "sciddpm.components.encoders:IdentityConfig", api_version=1),
            Component("scheduler", "v1sched", "x:y", "x:z", api_version=1)]
"""
    make_dist("v1plug", {"v1": "v1plug_hooks"}, {"v1plug_hooks.py": source})
    registry = Registry.load()
    assert registry.build("encoder", "v1enc") is not None
    [error] = [f.error for f in registry.failures]
    assert "'v1sched' targets sciddpm component API 1" in error and "API 2" in error and "`process`" in error


def test_a_scheduler_without_a_noise_process_is_refused_at_build(make_dist):
    source = """
from pydantic import BaseModel, ConfigDict
from sciddpm.hooks import Component, hookimpl
from sciddpm.interfaces import Scheduler
class Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
class NoProcess(Scheduler):
    def __init__(self, config): pass
    sample_t = add_noise = target = c_noise = set_timesteps = step = lambda *a, **k: None
@hookimpl
def sciddpm_components():
    return [Component("scheduler", "bare", NoProcess, Cfg)]
"""
    make_dist("bareplug", {"bare": "bareplug_hooks"}, {"bareplug_hooks.py": source})
    with pytest.raises(PluginError, match=r"scheduler 'bare/bare' declares no noise process.*`process`"):
        Registry.load().build("scheduler", "bare")


def test_two_distributions_with_the_same_plugin_name_clash(make_dist):
    make_dist("labplug", {"lab": "labplug_hooks"}, {"labplug_hooks.py": HOOKS, "labplug_impl.py": IMPL})
    make_dist("otherlab", {"lab": "otherlab_hooks"}, {"otherlab_hooks.py": HOOKS})
    with pytest.raises(NameClashError, match=r"'lab'.*(labplug.*otherlab|otherlab.*labplug)"):
        Registry.load()


def test_one_plugin_registering_a_name_twice_clashes(make_dist):
    twice = HOOKS.replace('"denoiser", "unet"', '"encoder", "scale"')
    make_dist("twiceplug", {"twice": "twiceplug_hooks"}, {"twiceplug_hooks.py": twice})
    with pytest.raises(NameClashError, match="twice/scale"):
        Registry.load()


def test_unknown_name_lists_installed_and_failed(make_dist):
    make_dist("brokenplug", {"broken": "brokenplug_hooks"}, {"brokenplug_hooks.py": "import not_a_module\n"})
    registry = Registry.load()
    with pytest.raises(UnknownComponentError) as info:
        registry.get("scheduler", "ddmp")
    message = str(info.value)
    assert "Did you mean 'ddpm'" in message
    assert "sciddpm/ddim" in message and "sciddpm/ddpm" in message
    assert "broken (brokenplug 0.1.0)" in message


def test_disable_autoload_keeps_only_builtins(labplug, monkeypatch):
    monkeypatch.setenv("SCIDDPM_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = Registry.load()
    assert {e.plugin for e in registry.entries()} == {"sciddpm"}


def test_block_plugins_skips_the_named_ones(labplug, make_dist, monkeypatch):
    make_dist("brokenplug", {"broken": "brokenplug_hooks"}, {"brokenplug_hooks.py": "import not_a_module\n"})
    monkeypatch.setenv("SCIDDPM_BLOCK_PLUGINS", "broken, lab")
    registry = Registry.load()
    assert registry.failures == []
    plugins = {e.plugin for e in registry.entries()}  # installed plugins (e.g. climate) stay
    assert "sciddpm" in plugins and not plugins & {"broken", "lab"}


def test_plugin_given_directly_registers_without_installing():
    import types

    from sciddpm.components.encoders import IdentityConfig
    from sciddpm.hooks import Component, hookimpl

    plugin = types.SimpleNamespace(
        sciddpm_components=hookimpl(lambda: [Component("metric", "zero", lambda c: None, IdentityConfig)])
    )
    registry = Registry.load(plugins={"notebook": plugin})
    assert registry.get("metric", "zero").full_name == "notebook/zero"


def _cli(*args, env_extra=None, pythonpath=None):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SCIDDPM_")}
    env.update(env_extra or {})
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*pythonpath, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "sciddpm", *args], capture_output=True, text=True, env=env)


def test_cli_plugins_json_lists_components_and_errors(make_dist, labplug):
    broken = make_dist(
        "brokenplug", {"broken": "brokenplug_hooks"}, {"brokenplug_hooks.py": "import not_a_module\n"}
    )
    out = _cli("plugins", "--json", pythonpath=[str(labplug), str(broken)])
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    names = {c["name"] for c in data["components"]}
    assert {"sciddpm/unet", "sciddpm/ddpm", "lab/scale"} <= names
    assert set(data["components"][0]) == {"kind", "name", "plugin", "version", "description"}
    [error] = data["errors"]
    assert error["plugin"] == "broken" and error["distribution"] == "brokenplug"


def test_cli_plugins_table_and_clean_error_in_strict_mode(make_dist):
    broken = make_dist(
        "brokenplug", {"broken": "brokenplug_hooks"}, {"brokenplug_hooks.py": "import not_a_module\n"}
    )
    out = _cli("plugins", pythonpath=[str(broken)])
    assert out.returncode == 0
    assert "denoisers (2)" in out.stdout and "sciddpm/unet" in out.stdout
    assert "failed to load (1)" in out.stdout and "not_a_module" in out.stdout
    strict = _cli("plugins", env_extra={"SCIDDPM_STRICT_PLUGINS": "1"}, pythonpath=[str(broken)])
    assert strict.returncode == 1
    assert strict.stderr.startswith("sciddpm: error:") and "Traceback" not in strict.stderr
    debug = _cli("--debug", "plugins", env_extra={"SCIDDPM_STRICT_PLUGINS": "1"}, pythonpath=[str(broken)])
    assert "Traceback" in debug.stderr


@pytest.mark.parametrize("lazy", [True, False])
def test_a_config_field_named_type_is_refused_naming_the_plugin_component_and_field(make_dist, lazy):
    # It used to fail inside the core with "ComponentSpec() got multiple values for keyword 'type'".
    config = '"typeplug_impl:Cfg"' if lazy else "Cfg"
    hooks = f"""
from sciddpm.hooks import Component, hookimpl
from typeplug_impl import Cfg
@hookimpl
def sciddpm_components():
    return [Component("encoder", "typed", "sciddpm.components.encoders:Identity", {config})]
"""
    impl = """
from pydantic import BaseModel, ConfigDict
class Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = "a"
"""
    make_dist(
        "typeplug", {"typeplug": "typeplug_hooks"}, {"typeplug_hooks.py": hooks, "typeplug_impl.py": impl}
    )
    registry = Registry.load()
    message = r"has a field named 'type', which run files reserve .*rename the field"
    if lazy:  # the class is imported when first used, and refused there
        with pytest.raises(
            ConfigError, match=r"plugin 'typeplug', component 'typed': its config class Cfg " + message
        ):
            load_run({"pipeline": {"encoder": {"type": "typeplug/typed"}}}, registry=registry)
    else:  # given as a class, it is refused when the plugin registers
        [failure] = registry.failures
        assert failure.plugin == "typeplug" and re.search(
            "component 'typed': its config class Cfg " + message, failure.error
        )
