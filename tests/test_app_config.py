"""The shipped Streamlit config is a classroom server's (issue 13.4, 14.6): no file watcher, the viewer toolbar
(no Deploy button) and no tracebacks in the students' browsers; every value is one this Streamlit accepts."""
import tomllib

from bmteach.storage import REPO_ROOT

CONFIG = REPO_ROOT / ".streamlit" / "config.toml"


def _allowed(option: str) -> str:
    from streamlit import config
    return config._config_options_template[option].description


def test_the_shipped_config_is_quiet_and_hides_developer_tools():
    conf = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    assert conf["server"]["fileWatcherType"] == "none"
    assert conf["client"]["toolbarMode"] == "viewer"
    assert conf["client"]["showErrorDetails"] in ("type", "none")
    for option, value in (("server.fileWatcherType", "none"), ("client.toolbarMode", "viewer"),
                          ("client.showErrorDetails", conf["client"]["showErrorDetails"])):
        assert f'"{value}"' in _allowed(option), option


def test_developers_are_told_how_to_turn_the_watcher_back_on():
    assert "--server.fileWatcherType auto" in (REPO_ROOT / "docs" / "classroom.md").read_text(encoding="utf-8")
