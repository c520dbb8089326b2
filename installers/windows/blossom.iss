; Inno Setup 6 script for BlossomSetup.exe. Build it with installers/build_windows.py (on Windows, with
; Inno Setup 6 installed), which passes the defines below:
;   ISCC /DAppVersion=0.1.0 /DBundleTarball=<path to Blossom-0.1.0-linux-x86_64.tar.gz>
;        /DIconFile=<path to blossom.ico> /O<output folder> installers\windows\blossom.iss
;
; Why the Linux bundle: hivemind 1.1.12, which carries every Blossom connection (client and server),
; does not run on native Windows. PyPI has no Windows wheel of it, its libp2p daemon (p2pd) is built
; for Linux and macOS only, it talks to that daemon over Unix domain sockets with asyncio's Unix-only
; calls, and its DHT process runs on uvloop, which has no Windows support. hivemind's own README
; lists Windows 10+ as "experimental, using WSL". So this installer puts the Linux bundle into WSL 2:
; the window opens on the Windows desktop through WSLg, NVIDIA GPUs are reachable through WSL's CUDA
; support (with a CUDA build of the bundle), and Windows keeps a desktop shortcut, a Start menu entry,
; an optional start-on-login entry and an uninstaller.
;
; What it does:
; 1. Checks that WSL 2 with a Linux distribution works (`wsl.exe --exec true`). If not, it offers to run
;    `wsl.exe --install` as administrator (Windows downloads Ubuntu); after the restart Windows asks
;    for, the user runs BlossomSetup.exe again.
; 2. Copies the Linux tarball, install_in_wsl.sh and the icon to %LOCALAPPDATA%\Programs\Blossom (no
;    administrator rights needed), then runs install_in_wsl.sh inside the default distribution, which
;    installs Blossom for that Linux user (~/.local/share/blossom, ~/.local/bin/blossom), and deletes
;    the tarball's copy on Windows when that worked.
; 3. Shortcuts run `wsl.exe --cd ~ --exec ./.local/bin/blossom` (its console window starts minimised).
; 4. The uninstaller runs Blossom's uninstall.sh inside WSL, removes the start-on-login value and the
;    Windows files. Converted models and settings inside WSL stay unless removed with uninstall.sh --purge.

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#ifndef BundleTarball
  #error Pass /DBundleTarball=<path to the Linux tarball built by installers/build_linux.py>
#endif
#ifndef IconFile
  #define IconFile "..\build\blossom.ico"
#endif
#define TarballName ExtractFileName(BundleTarball)
#define RunKey "Software\Microsoft\Windows\CurrentVersion\Run"
#define LaunchArgs "--cd ~ --exec ./.local/bin/blossom"

[Setup]
AppId={{6B7F3A52-1C9E-4F0B-9B7E-B10550A1A001}
AppName=Blossom
AppVersion={#AppVersion}
AppPublisher=Blossom contributors
DefaultDirName={localappdata}\Programs\Blossom
DefaultGroupName=Blossom
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
MinVersion=10.0.19041
OutputBaseFilename=BlossomSetup
SetupIconFile={#IconFile}
UninstallDisplayIcon={app}\blossom.ico
UninstallDisplayName=Blossom
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern

[Tasks]
Name: "desktopicon"; Description: "Create a desktop shortcut"; GroupDescription: "Shortcuts:"
Name: "startup"; Description: "Start Blossom when I log in (in the tray)"; GroupDescription: "Start:"; Flags: unchecked

[Files]
Source: "{#BundleTarball}"; DestDir: "{app}"; Flags: ignoreversion
Source: "install_in_wsl.sh"; DestDir: "{app}"; Flags: ignoreversion
Source: "{#IconFile}"; DestDir: "{app}"; DestName: "blossom.ico"; Flags: ignoreversion

[Icons]
Name: "{group}\Blossom"; Filename: "{sys}\wsl.exe"; Parameters: "{#LaunchArgs}"; IconFilename: "{app}\blossom.ico"; Flags: runminimized
Name: "{group}\Blossom self-test"; Filename: "{sys}\cmd.exe"; Parameters: "/k wsl.exe {#LaunchArgs} --self_test"; IconFilename: "{app}\blossom.ico"
Name: "{group}\Uninstall Blossom"; Filename: "{uninstallexe}"
Name: "{autodesktop}\Blossom"; Filename: "{sys}\wsl.exe"; Parameters: "{#LaunchArgs}"; IconFilename: "{app}\blossom.ico"; Flags: runminimized; Tasks: desktopicon

[Registry]
Root: HKCU; Subkey: "{#RunKey}"; ValueType: string; ValueName: "Blossom"; ValueData: """{sys}\wsl.exe"" {#LaunchArgs} --minimized"; Tasks: startup; Flags: uninsdeletevalue

[Run]
Filename: "{sys}\wsl.exe"; Parameters: "{#LaunchArgs}"; Description: "Start Blossom now"; Flags: postinstall nowait skipifsilent runminimized

[Code]
const
  WslHelp = 'https://learn.microsoft.com/windows/wsl/install';

function WslPath(): String;
begin
  Result := ExpandConstant('{sys}\wsl.exe');
end;

{ True when WSL runs a Linux distribution: wsl.exe exists and `wsl.exe --exec true` succeeds. }
function WslWorks(): Boolean;
var
  ResultCode: Integer;
begin
  Result := FileExists(WslPath()) and
            Exec(WslPath(), '--exec true', '', SW_HIDE, ewWaitUntilTerminated, ResultCode) and
            (ResultCode = 0);
end;

{ Offer `wsl --install` (administrator) when WSL is missing; setup cannot go on before a restart. }
function InitializeSetup(): Boolean;
var
  ResultCode: Integer;
begin
  Result := True;
  if WslWorks() then
    exit;
  Result := False;
  if SuppressibleMsgBox('Blossom runs inside the Windows Subsystem for Linux (WSL 2), because the ' +
      'networking library it is built on (hivemind) does not run on Windows itself.' + #13#10#13#10 +
      'WSL 2 with a Linux distribution was not found. Install it now? Windows asks for administrator ' +
      'rights, downloads Ubuntu and may ask you to restart. Then run BlossomSetup.exe again.',
      mbConfirmation, MB_YESNO, IDNO) = IDYES then
  begin
    if not ShellExec('runas', WslPath(), '--install', '', SW_SHOW, ewWaitUntilTerminated, ResultCode) then
      SuppressibleMsgBox('Could not start "wsl --install" (' + SysErrorMessage(ResultCode) + '). See ' +
        WslHelp, mbError, MB_OK, IDOK)
    else
      SuppressibleMsgBox('When WSL has finished installing (and after a restart if Windows asks for one), ' +
        'open Ubuntu once from the Start menu to create your Linux user, then run BlossomSetup.exe again.',
        mbInformation, MB_OK, IDOK);
  end
  else
    SuppressibleMsgBox('Blossom needs WSL 2. Install it with "wsl --install" (see ' + WslHelp +
      '), then run BlossomSetup.exe again.', mbInformation, MB_OK, IDOK);
end;

{ After the files are copied: install the Linux bundle for the WSL user. }
procedure CurStepChanged(CurStep: TSetupStep);
var
  ResultCode: Integer;
begin
  if CurStep <> ssPostInstall then
    exit;
  WizardForm.StatusLabel.Caption := 'Installing Blossom inside WSL (this takes a minute) ...';
  if Exec(WslPath(), '--cd "' + ExpandConstant('{app}') + '" --exec sh ./install_in_wsl.sh', '',
          SW_HIDE, ewWaitUntilTerminated, ResultCode) and (ResultCode = 0) then
    DeleteFile(ExpandConstant('{app}\{#TarballName}'))  { installed inside WSL: the copy here is not needed }
  else
    SuppressibleMsgBox('Installing Blossom inside WSL failed (exit code ' + IntToStr(ResultCode) + '). ' +
      'Open Ubuntu and run: cd "$(wslpath ''' + ExpandConstant('{app}') + ''')" && sh install_in_wsl.sh',
      mbError, MB_OK, IDOK);
end;

{ Uninstall: Blossom's own uninstall.sh inside WSL, and the start-on-login value the app may have set. }
procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
var
  ResultCode: Integer;
begin
  if CurUninstallStep <> usUninstall then
    exit;
  if FileExists(WslPath()) then
    Exec(WslPath(), '--cd ~ --exec sh -c "[ ! -x .local/share/blossom/uninstall.sh ] || .local/share/blossom/uninstall.sh"',
         '', SW_HIDE, ewWaitUntilTerminated, ResultCode);
  RegDeleteValue(HKEY_CURRENT_USER, '{#RunKey}', 'Blossom');
end;
