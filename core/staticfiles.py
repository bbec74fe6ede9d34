"""Static file storage of the production profile.

collectstatic writes each file under a hashed name (nginx caches /static/ for a year, never
revalidated) with a gzip copy beside it (whitenoise). The page scripts are ES modules that import
each other by relative path; Django rewrites those imports to the hashed names only when asked
(`support_js_module_import_aggregation`), and without it a page would load its changed entry
script with the year-old copy of a module it imports.
"""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class ModuleManifestStaticFilesStorage(CompressedManifestStaticFilesStorage):
    """Whitenoise's compressed manifest storage; ES module imports name the hashed files."""

    support_js_module_import_aggregation = True
