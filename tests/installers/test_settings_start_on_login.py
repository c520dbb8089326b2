"""The settings tab's "Start Blossom when I log in" box writes and removes the real autostart entry."""
from __future__ import annotations

from app.autostart import Autostart
from app.settings import AppSettings
from app.widgets.settings import SettingsTab
from tests.installers.desktop_exec import parse_exec, read_desktop_entry

COMMAND = ["/opt/blossom/blossom", "--minimized"]


def test_checkbox_switches_the_login_entry(qtbot, tmp_path):
    autostart = Autostart(COMMAND, platform="linux", environ={"XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path)})
    tab = SettingsTab(autostart=autostart)
    qtbot.addWidget(tab)
    tab.show_settings(AppSettings())
    assert not tab.start_on_login.isChecked()
    tab.start_on_login.click()
    assert autostart.path.is_file()
    assert parse_exec(read_desktop_entry(autostart.path.read_text())["Exec"]) == COMMAND
    tab.start_on_login.click()
    assert not autostart.path.exists()


def test_checkbox_shows_the_entry_that_exists_and_failures(qtbot, tmp_path):
    autostart = Autostart(COMMAND, platform="linux", environ={"XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path)})
    autostart.enable()
    tab = SettingsTab(autostart=autostart)
    qtbot.addWidget(tab)
    tab.show_settings(AppSettings())
    assert tab.start_on_login.isChecked()

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    broken = Autostart(COMMAND, platform="linux", environ={"XDG_CONFIG_HOME": str(blocker), "HOME": str(tmp_path)})
    broken_tab = SettingsTab(autostart=broken)
    qtbot.addWidget(broken_tab)
    broken_tab.show_settings(AppSettings())
    broken_tab.start_on_login.click()
    assert not broken_tab.start_on_login.isChecked()  # put back: nothing was written
    assert "start on login" in broken_tab.problem.text()
    assert not broken_tab.problem.isHidden()
