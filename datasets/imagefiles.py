"""Image files an importer takes from a folder: inside that folder, and images indeed.

An importer copies each file it is pointed at into storage as a cell's patch. A symbolic link
would let it copy any file the server can read, and a misnamed file would become a "patch" that
fails only when someone opens it, so both are refused before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

# Cell patches are a few hundred pixels a side; this bounds what one check may decode.
MAX_PATCH_PIXELS = 4096 * 4096


def image_file_problem(root: Path, path: Path) -> str | None:
    """Why `path` cannot be imported as a patch from the folder `root`, or None if it can.

    `path` is resolved (every link followed) and must still lie inside `root`, be a file, and
    be an image that Pillow decodes whole.
    """
    if not path.exists():
        return "missing"
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        return "a link that leads out of the folder"
    if not resolved.is_file():
        return "not a file"
    try:
        with Image.open(resolved) as image:
            if image.width * image.height > MAX_PATCH_PIXELS:
                return f"a {image.width}x{image.height} image, too large for a cell patch"
            image.load()
    except Image.DecompressionBombError:
        return "an image too large to open safely"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"not a readable image ({exc})"
    return None
