"""On-demand image renders: ``GET /api/v1/uploads/{id}/render/{ops}`` with ops from a
closed grammar (``w_300,h_200,fit_cover,f_webp,q_80``), behind an HMAC signature over the
exact path, rendered once and kept as a derived file of the upload."""
