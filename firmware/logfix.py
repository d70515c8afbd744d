"""What a log line's reader can do about it, and OTA progress: the tables behind
log.hint() and log.progress(), kept out of firmware/log.py so they take RAM only once a
warning is logged or an update runs.

`hint(text, platform)` names the config key or action for a cause it recognises (credentials
refused, unknown host, unknown device, certificate, clock not set, connection refused or
timed out), looking only at the text before the first `; `. `progress(stage, detail)` gives
the line to log, or None; firmware/log.py logs it (this module imports only the platform
registry, for the credentials a refusal names).
"""

# (needles, fix) in order: the first needle found in a warning or error line names the fix
_FIXES = (
    (("401", "403", "nauthorized", "orbidden", "refused the tokens", "tokens are refused"),
     "the cloud refused the device's credentials: check %s in secrets.json"),
    (("addrinfo", "EAI_", "gaierror", "-202", "Name or service"),
     "the host name does not resolve: check cloud.api_url and the network's DNS"),
    (("404", "not_found", "not found"),
     "the cloud does not know this device: check cloud.device_id (and the sensor and "
     "command ids)"),
    (("CERT", "ertificate", "X509", "x509", "verify failed"),
     "the server's certificate does not check against cloud.ca_file: get the CA the "
     "service uses (docs/ca.md, make check-ca) and provision it"),
    (("ClockUnset", "not set (NTP"),
     "the clock is not set: it comes from NTP once Wi-Fi is up; check the network"),
    (("ECONNREFUSED", "Errno 111", "(111)", "onnection refused"),
     "nothing listens there: check cloud.api_url's host and port"),
    (("ETIMEDOUT", "Errno 110", "Errno 116", "(110)", "(116)", "timed out"),
     "no answer: check the network and cloud.api_url"),
)


def hint(text, platform=None):
    """What a user can do about the cause `text` shows, or None when it shows none known.
    Only the text before the first `; ` counts (after it come counts like `; 404 pending`)."""
    if "fix:" in text:
        return None
    cut = text.find("; ")
    if cut >= 0:
        text = text[:cut]
    for needles, fix in _FIXES:
        for n in needles:
            if n in text:
                if "%s" in fix:
                    return fix % _credentials(platform)
                return fix
    return None


def _credentials(platform):
    from firmware import platforms  # the registry's row says which keys

    entry = platforms.row(platform)
    return entry[platforms.CREDENTIALS] if entry else "the cloud credentials in config.json"


_progress = [0, 0]  # KB logged of the download, files unpacked


def progress(stage, detail=None):
    """The line to log every 32 KB downloaded, every 10 files unpacked, and at the signature
    check (the OTA updater's step hook; other stages log themselves), else None."""
    if stage == "download":
        kb = (detail or 0) // 1024
        if kb < _progress[0]:  # a new download
            _progress[0] = 0
        if kb >= _progress[0] + 32:
            _progress[0] = kb
            return "download: %d KB so far" % kb
    elif stage == "verified":
        _progress[1] = 0
        return "bundle %s: signature and hashes check out; unpacking" % (detail,)
    elif stage == "unpack":
        _progress[1] += 1
        if _progress[1] % 10 == 0:
            return "unpack: %d files (%s)" % (_progress[1], detail)
    elif stage == "unpacked":
        return "unpack: done, %d files" % _progress[1]
    return None
