// Every `pattern` attribute in the page templates compiles as the browser compiles it: with the
// `v` (unicodeSets) flag, under which an invalid pattern is silently never checked.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

const TEMPLATES = new URL("../templates/", import.meta.url).pathname;

function templates(folder) {
  return readdirSync(folder, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory()
      ? templates(join(folder, entry.name))
      : entry.name.endsWith(".html")
        ? [join(folder, entry.name)]
        : [],
  );
}

function patterns() {
  return templates(TEMPLATES).flatMap((path) =>
    [...readFileSync(path, "utf8").matchAll(/\spattern="([^"]*)"/g)].map((m) => ({
      path,
      pattern: m[1].replaceAll("&quot;", '"').replaceAll("&amp;", "&"),
    })),
  );
}

test("the templates hold pattern attributes to check", () => {
  assert.ok(patterns().length >= 1);
});

test("every pattern attribute compiles with the v flag", () => {
  for (const { path, pattern } of patterns()) {
    assert.doesNotThrow(() => new RegExp(`^(?:${pattern})$`, "v"), `${path}: ${pattern}`);
  }
});

test("an unescaped hyphen in a class is what the v flag refuses", () => {
  assert.throws(() => new RegExp("[-a-z]+", "v"), SyntaxError);
  assert.doesNotThrow(() => new RegExp("[a-z\\-]+", "v"));
});
