// lnorm/kernels/buffered_tail.inl: partial-vector loads and stores through a small stack buffer, for
// ISAs without masked memory operations on every type (AVX2, NEON). Included inside each `vec`
// struct after its `lanes`, `load` and `store`, so it is compiled per ISA and per element type.

// The first n elements at p (n may be <= 0 or >= lanes), zero past n.
template <class X>
static reg load_n(const X* p, std::int64_t n) noexcept {
  if (n >= lanes) return load(p);
  X buf[lanes];
  std::memset(static_cast<void*>(buf), 0, sizeof buf);
  if (n > 0) std::memcpy(static_cast<void*>(buf), static_cast<const void*>(p), static_cast<std::size_t>(n) * sizeof(X));
  return load(buf);
}

// The first n lanes of v to p.
template <class X>
static void store_n(X* p, reg v, std::int64_t n) noexcept {
  if (n >= lanes) return store(p, v);
  X buf[lanes];
  store(buf, v);
  if (n > 0) std::memcpy(static_cast<void*>(p), static_cast<const void*>(buf), static_cast<std::size_t>(n) * sizeof(X));
}
