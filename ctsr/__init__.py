
import logging as _logging

# pyiqa pulls in bitsandbytes, whose CPU backend warns on import that an optional 4-bit kernel package is missing;
# ctsr never runs 4-bit layers, so that line is noise in every command's output.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
