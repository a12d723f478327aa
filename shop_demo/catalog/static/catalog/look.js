// Shop the look: highlight the picked item's products; drag a box on the photo to search it
// (through the visual search API, sending the photo the page shows).
(function () {
  const photo = document.getElementById("look-photo");
  if (!photo) return;
  const img = document.getElementById("look-photo-image");
  const draw = document.getElementById("look-draw");
  const grid = document.getElementById("box-grid");
  const boxResults = document.getElementById("box-results");
  const pick = (box) => {
    photo.querySelectorAll(".look-box").forEach((b) => b.classList.toggle("active", b === box));
    location.hash = box.getAttribute("href");
  };
  // Keyboard users pick a box with Enter (it is a link); the pointer handlers below see both
  // a click on a box and a drag that draws a new one.
  photo.querySelectorAll(".look-box").forEach((box) => box.addEventListener("keydown", (e) => {
    if (e.key === "Enter") pick(box);
  }));
  photo.querySelectorAll(".look-box").forEach((box) => box.addEventListener("click", (e) => e.preventDefault()));
  let start = null, pressed = null;
  const at = (e) => {
    const r = img.getBoundingClientRect();
    return { x: Math.max(0, Math.min(r.width, e.clientX - r.left)), y: Math.max(0, Math.min(r.height, e.clientY - r.top)) };
  };
  photo.addEventListener("dragstart", (e) => e.preventDefault());
  photo.addEventListener("pointerdown", (e) => {
    start = at(e); pressed = e.target.closest(".look-box");
    photo.setPointerCapture(e.pointerId);
  });
  photo.addEventListener("pointermove", (e) => {
    if (!start) return;
    const p = at(e);
    Object.assign(draw.style, { left: Math.min(p.x, start.x) + "px", top: Math.min(p.y, start.y) + "px",
      width: Math.abs(p.x - start.x) + "px", height: Math.abs(p.y - start.y) + "px" });
    draw.hidden = false;
  });
  photo.addEventListener("pointerup", async (e) => {
    if (!start) return;
    const p = at(e), s = start; start = null;
    const w = Math.abs(p.x - s.x), h = Math.abs(p.y - s.y);
    if (w < 10 || h < 10) { draw.hidden = true; if (pressed) pick(pressed); return; }
    const kx = img.naturalWidth / img.clientWidth, ky = img.naturalHeight / img.clientHeight;
    // The page shows the photo as decoded (EXIF-rotated, maybe scaled): send that copy.
    const blob = await (await fetch(img.src)).blob();
    const form = new FormData();
    form.append("image", blob, "look.jpg");
    form.append("box", [Math.min(p.x, s.x) * kx, Math.min(p.y, s.y) * ky, Math.max(p.x, s.x) * kx, Math.max(p.y, s.y) * ky].map(Math.round).join(","));
    const csrf = (document.cookie.match(/(?:^|; )csrftoken=([^;]+)/) || [])[1] || "";
    const response = await fetch("/api/visual-search/search/?k=4", { method: "POST", body: form, headers: { "X-CSRFToken": csrf } });
    const body = await response.json();
    grid.innerHTML = "";
    (body.results || []).forEach((r) => {
      const li = document.createElement("li"); li.className = "card";
      const a = document.createElement("a"); a.href = "/p/" + r.product.slug + "/";
      a.innerHTML = `<img src="${r.product.image}" alt="" width="240" height="240"><span class="card-name"></span><span class="score">${Math.round(r.score * 100)}% match</span>`;
      a.querySelector(".card-name").textContent = r.product.name;
      li.appendChild(a); grid.appendChild(li);
    });
    if (!response.ok) grid.textContent = body.detail || "Search failed.";
    boxResults.hidden = false;
    boxResults.scrollIntoView({ behavior: "smooth", block: "nearest" });
  });
})();
