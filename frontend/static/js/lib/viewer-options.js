/*
 * OpenSeadragon's tile-loading settings for a tile server that answers in about a millisecond
 * (stored JPEG tiles passed through, a signed URL checked without the database). OpenSeadragon's
 * defaults assume slow tiles: after the first frame it starts one new tile request per animation
 * frame, so a screen of tiles waits on the frame rate rather than on the server, and it walks
 * from blurry to sharp levels. annotate.js spreads these into its viewer options;
 * bench/viewer.py measures them against OpenSeadragon's defaults (this object emptied).
 *
 * Left at OpenSeadragon's defaults on purpose: preload (one image, never hidden) and
 * smoothTileEdgesMinZoom (drawing, not loading: it hides seams between tiles without overlap
 * beyond 110 % zoom).
 */

/** Tile-loading options; the comment before each gives OpenSeadragon 6.1's default. */
export const TILE_LOADING = {
  // (1) Start up to 16 tile requests in each frame that finds tiles missing: the column or row
  // of tiles a pan uncovers on a 1920 x 1080 screen comes in one frame, not one per frame.
  maxTilesPerFrame: 16,
  // (0, no limit) At most 12 requests in flight, the rest queued in OpenSeadragon, where a
  // request's timeout has not begun: HTTP/2 (nginx) runs them all at once, HTTP/1.1 six.
  imageLoaderLimit: 12,
  // (false) Fetch the level that is sharp at this zoom first, not every blurrier level on the
  // way: with fast tiles the sharp screen comes sooner and nothing is drawn twice.
  immediateRender: true,
  // (0, kept) No fade-in: a tile covers the screen only once opaque, so a fade would hold back
  // the sharp screen by its length.
  blendTime: 0,
  // (false, kept) Tiles are drawn opaque at once rather than blended by level opacity.
  alwaysBlend: false,
  // (0.5, kept) One level finer than the CSS pixels need: what a 2x (retina) screen needs to
  // look sharp, and tiles at a millisecond each make it cheap.
  minPixelRatio: 0.5,
  // (false, kept) Tiles load as images: no XHR and Blob copy per tile, and the signed tile URLs
  // need no request headers.
  loadTilesWithAjax: false,
  // (0) Retry a failed tile twice instead of leaving a hole in the scan until the page is
  // reloaded: a restarted web process or a dropped connection heals by itself.
  tileRetryMax: 2,
  // (2500 ms) Retry soon: on a server that answers in milliseconds a failure is a blip.
  tileRetryDelay: 500,
  // (30000 ms) A tile not come in 15 s will not come: give up and let the retry ask again.
  timeout: 15000,
};
