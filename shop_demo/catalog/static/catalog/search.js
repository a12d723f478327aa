// Search by photo: drag and drop, a preview, and an optional crop box drawn on it.
// The form works without this script; it only adds the conveniences.
(function () {
  const form = document.getElementById("photo-search");
  if (!form) return;
  const input = document.getElementById("image");
  const zone = document.getElementById("dropzone");
  const zoneText = document.getElementById("dropzone-text");
  const preview = document.getElementById("preview");
  const img = document.getElementById("preview-image");
  const canvas = document.getElementById("box-canvas");
  const boxField = document.getElementById("box");
  let start = null, box = null;

  function show(file) {
    if (!file) return;
    zoneText.textContent = file.name;
    img.onload = () => { preview.hidden = false; resize(); };
    img.src = URL.createObjectURL(file);
    box = null; boxField.value = "";
  }
  function resize() {
    canvas.width = img.clientWidth; canvas.height = img.clientHeight; draw();
  }
  function draw() {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!box) return;
    ctx.fillStyle = "rgba(0,0,0,.35)";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.clearRect(box.x, box.y, box.w, box.h);
    ctx.strokeStyle = "#22c55e"; ctx.lineWidth = 3;
    ctx.strokeRect(box.x, box.y, box.w, box.h);
  }
  function point(event) {
    const r = canvas.getBoundingClientRect();
    return { x: Math.max(0, Math.min(r.width, event.clientX - r.left)),
             y: Math.max(0, Math.min(r.height, event.clientY - r.top)) };
  }
  canvas.addEventListener("pointerdown", (e) => { start = point(e); canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointermove", (e) => {
    if (!start) return;
    const p = point(e);
    box = { x: Math.min(start.x, p.x), y: Math.min(start.y, p.y), w: Math.abs(p.x - start.x), h: Math.abs(p.y - start.y) };
    draw();
  });
  canvas.addEventListener("pointerup", () => {
    start = null;
    if (!box || box.w < 8 || box.h < 8) { box = null; boxField.value = ""; draw(); return; }
    const sx = img.naturalWidth / canvas.width, sy = img.naturalHeight / canvas.height;
    boxField.value = [box.x * sx, box.y * sy, (box.x + box.w) * sx, (box.y + box.h) * sy].map(Math.round).join(",");
  });
  document.getElementById("clear-box").addEventListener("click", () => { box = null; boxField.value = ""; draw(); });
  input.addEventListener("change", () => show(input.files[0]));
  ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (e) => { e.preventDefault(); zone.classList.add("dragging"); }));
  ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, () => zone.classList.remove("dragging")));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    if (!e.dataTransfer.files.length) return;
    input.files = e.dataTransfer.files;
    show(input.files[0]);
  });
  window.addEventListener("resize", () => { if (!preview.hidden) resize(); });
})();
