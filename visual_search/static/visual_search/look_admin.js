// The look admin: a candidate button puts its product into the row's product field.
"use strict";
document.addEventListener("click", (event) => {
  const button = event.target.closest(".vs-candidate");
  if (!button) return;
  const row = button.closest("tr");
  const input = row && row.querySelector("input[name$='-product']");
  if (!input) return;
  input.value = button.dataset.pk;
  input.dispatchEvent(new Event("change", { bubbles: true }));
  const label = input.parentElement.querySelector("strong");
  if (label) label.textContent = button.dataset.name;
  row.querySelectorAll(".vs-candidate").forEach((other) => {
    other.setAttribute("aria-pressed", String(other === button));
  });
});
