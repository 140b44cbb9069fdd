// The designs of examples/designs.ts each train briefly and their loss falls.
import { designs } from '../../examples/designs';

const avg = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

describe('examples/designs.ts', () => {
  for (const name of Object.keys(designs)) {
    test(`${name}: the loss falls`, () => {
      const steps = name === 'segments' ? 300 : 120;
      const l = designs[name](steps);
      expect(l.length).toBe(steps);
      expect(l.every(Number.isFinite)).toBe(true);
      expect(avg(l.slice(-12))).toBeLessThan(0.95 * avg(l.slice(0, 12)));
    }, 60000);
  }
});
