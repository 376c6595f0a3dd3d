// Bundle the front end into dist/ (served by Django as static files).
import { build } from "esbuild";
import { cpSync, mkdirSync, rmSync } from "node:fs";

rmSync("dist", { recursive: true, force: true });
mkdirSync("dist", { recursive: true });

await build({
  entryPoints: ["src/main.js"],
  bundle: true,
  minify: true,
  sourcemap: true,
  format: "iife",
  target: ["chrome110", "firefox110", "safari16"],
  outfile: "dist/nephroweb.js",
});
cpSync("src/nephroweb.css", "dist/nephroweb.css");
cpSync("node_modules/openseadragon/build/openseadragon/images", "dist/openseadragon-images", {
  recursive: true,
});
console.log("built frontend/dist");
