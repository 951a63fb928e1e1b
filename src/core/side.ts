/** Which end tlsd is (the child's SIDE): SERVER when the peer connected to us, CLIENT when we dialed it. */
export type Side = 'SERVER' | 'CLIENT';
