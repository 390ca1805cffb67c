import { describe, expect, it } from 'vitest';
import { scopeSessionCookies } from './cookies.ts';

describe('scopeSessionCookies', () => {
  it('writes the session cookie and its signature once per path that reads it', () => {
    expect(
      scopeSessionCookies(
        [
          '_session=abc; path=/; expires=Tue, 08 Dec 2026 05:00:00 GMT; samesite=lax; secure; httponly',
          '_session.sig=xyz; path=/; samesite=lax; secure; httponly',
        ],
        '_session',
      ),
    ).toEqual([
      '_session=abc; path=/auth; expires=Tue, 08 Dec 2026 05:00:00 GMT; samesite=lax; secure; httponly',
      '_session=abc; path=/session/end; expires=Tue, 08 Dec 2026 05:00:00 GMT; samesite=lax; secure; httponly',
      '_session.sig=xyz; path=/auth; samesite=lax; secure; httponly',
      '_session.sig=xyz; path=/session/end; samesite=lax; secure; httponly',
    ]);
  });

  it('clears on every path, and leaves other cookies and already scoped ones alone', () => {
    const other = '_interaction=u1; path=/interaction/u1; samesite=lax; secure; httponly';
    const scoped = '_session=abc; path=/auth; secure';
    const cleared = scopeSessionCookies(
      [
        '_session=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; secure',
        other,
        scoped,
        '_sessionx=1; path=/',
      ],
      '_session',
    );
    expect(cleared).toEqual([
      '_session=; path=/auth; expires=Thu, 01 Jan 1970 00:00:00 GMT; secure',
      '_session=; path=/session/end; expires=Thu, 01 Jan 1970 00:00:00 GMT; secure',
      other,
      scoped,
      '_sessionx=1; path=/',
    ]);
  });
});
