"""Data files bundled with kspec_xr (telluric masks, ...); see README.md here."""
